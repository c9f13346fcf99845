"""`videokv bench long`, reduced: two short haystacks with needle clusters, ingested in their own
processes, asked under a context budget small enough that the pyramid and drop policies
engage; the JSON has ingest figures, per-policy summaries, the retrieval scale and targets."""

from __future__ import annotations

import json

from tests.conftest import MODEL_CACHE


def test_bench_long_reduced(tmp_path, monkeypatch):
    from videokv.bench.long import main

    monkeypatch.setenv("VIDEOKV_MODEL_CACHE", str(MODEL_CACHE))
    monkeypatch.setenv("VIDEOKV_CONTEXT_BUDGET", "300")
    out = tmp_path / "long.json"
    main(["--hours", "0.02,0.04", "--repeats", "1", "--depths", "0.3,0.7", "--index-sizes", "1000",
          "--threads", "2", "--max-new-tokens", "6", "--workdir", str(tmp_path / "w"), "--out", str(out)])
    r = json.loads(out.read_text())
    assert not r["partial"] and set(r["summary"]) == {"0.02h", "0.04h"}
    for s in r["summary"].values():
        assert s["ingest"]["frames"] == round(s["hours"] * 3600) and 0 < s["ingest"]["peak_rss_mb"] < 4096
        for p in ("pyramid", "drop"):
            assert s["policies"][p]["context_tokens_max"] <= 300
    used = {u for s in r["summary"].values() for p in s["policies"].values() for u in p["used"]}
    assert used & {"pyramid", "drop"}, used                     # the budget was binding
    assert r["retrieval_scale"] and set(r["targets"]) >= {"frames_at_longest", "peak_rss_ratio", "ttft_ratio"}
    assert out.with_suffix(".png").stat().st_size > 0 and out.with_suffix(".md").read_text().strip()
