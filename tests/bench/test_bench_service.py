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


def test_bench_service_shards_reduced(tmp_path, monkeypatch):
    """`--shards 2`, reduced: a front and shards of its own per phase; every phase ingests
    every video, the 2-shard phase has two shards, the upload cost is measured both ways."""
    from videokv.bench.service import main

    monkeypatch.setenv("VIDEOKV_MODEL_CACHE", str(MODEL_CACHE))
    out = tmp_path / "bench_shards.json"
    rc = main(["--shards", "2", "--videos", "3", "--minutes", "0.1", "--upload-mb", "8", "--repeats", "1",
               "--no-warmup", "--no-same-processes", "--out", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0 and res["failed"] == 0, res
    assert set(res["phases"]) == {"1", "2"} and "ratio_same_processes" not in res
    for p in res["phases"].values():
        assert p["videos"] == 3 and sum(p["per_shard"].values()) == 3 and p["videos_per_min"] > 0, p
    assert len(res["phases"]["2"]["per_shard"]) == 2           # placed by content: not always on both
    up = res["upload"]
    assert up["bytes"] > 8e6 and up["direct_s"] > 0 and up["front_s"] > 0 and up["front_peak_rss_mb"] > 0
    assert res["ratio"] > 0 and "| 2 | 2 |" in out.with_suffix(".md").read_text()
