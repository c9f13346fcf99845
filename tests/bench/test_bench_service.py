"""`videokv bench service`, reduced: its own redis-server, worker and uvicorn API server;
concurrent questions and uploads all succeed; the JSON has the latency percentiles."""

from __future__ import annotations

import json

from tests.conftest import MODEL_CACHE


def test_bench_service_reduced(tmp_path, monkeypatch, capsys):
    from videokv.bench.service import main

    monkeypatch.setenv("VIDEOKV_MODEL_CACHE", str(MODEL_CACHE))
    out = tmp_path / "bench_service.json"
    rc = main(["--queries", "6", "--uploads", "2", "--timeout", "150", "--json", "--out", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0 and res["failed"] == 0, res
    assert res["queries"]["ok"] == 6 and res["uploads_to_ready"]["ok"] == 2
    for k in ("queries", "uploads_to_ready"):
        assert 0 < res[k]["p50_ms"] <= res[k]["p99_ms"], res
    assert json.loads(capsys.readouterr().out) == res
