"""`videokv bench service`, reduced: its own redis-servers, ingest worker, two query workers
(batched and one at a time) and uvicorn APIs; every question answers; the JSON has questions/s
and percentiles per stack and concurrency, the speedups, the API hop and the targets."""

from __future__ import annotations

import json

from tests.conftest import MODEL_CACHE


def test_bench_service_reduced(tmp_path, monkeypatch, capsys):
    from videokv.bench.service import main

    monkeypatch.setenv("VIDEOKV_MODEL_CACHE", str(MODEL_CACHE))
    out = tmp_path / "bench_service.json"
    rc = main(["--concurrency", "1,4", "--per-client", "1", "--max-new-tokens", "6", "--videos", "1",
               "--minutes", "0.25", "--threads", "1", "--json", "--out", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0 and res["failed"] == 0, res
    for c, n in (("1", 1), ("4", 4)):
        for stack in ("batched", "baseline"):
            lv = res["levels"][c][stack]
            assert lv["n"] == n and lv["qps"] > 0 and 0 < lv["p50_ms"] <= lv["p99_ms"], lv
    assert res["batched_speedup_c4"] > 0 and 0 < res["api_hop_ms"] < 1000
    assert set(res["targets"]) == {"api_hop_ms<=15"}
    assert out.with_suffix(".png").stat().st_size > 0 and "| 4 |" in out.with_suffix(".md").read_text()
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("\n{") + 1:]) == res

