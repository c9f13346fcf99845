"""`videokv bench query` on a tiny length: the JSON has every field, and every ratio is the
one computed from the measured values it sits next to."""

import json

import pytest
from PIL import Image

from videokv.bench import _common
from videokv.bench import query as bq


def test_bench_query_tiny_run(tmp_path, capsys):
    out = tmp_path / "out" / "q.json"
    argv = ["--minutes", "1", "--top-k", "1", "--repeats", "2", "--reprefill-repeats", "1", "--max-new-tokens", "2",
            "--workdir", str(tmp_path / "work"), "--out", str(out)]
    assert bq.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["bench"] == "query" and res["partial"] is False and "h2d" not in res
    assert res["machine"]["device"] == "cpu" and res["machine"]["date"] and res["config"]["top_k"] == 1
    [r] = res["lengths"]
    assert (r["minutes"], r["frames"], r["chunks"]) == (1, 60, 4) and not r["reused_video"]
    assert r["ingest"]["seconds"] > 0 and not r["ingest"]["deduplicated"] and "paging" not in r
    m = r["modes"]
    for name, x in m.items():
        assert len(x["ttft_ms_all"]) == 2 and x["ttft_ms"] == pytest.approx(x["ttft_ms_all"][1], abs=0.01), name
        assert 0 < x["ttft_ms"] <= x["total_ms"] and x["video_prefill_runs"] == 0 and x["kv_bytes_loaded"] > 0
        assert x["kv_bytes_read_repeat"] <= x["kv_bytes_read_first"] and not x["beyond_context_window"]
    assert m["sparse"]["kv_bytes_loaded"] < m["bilevel"]["kv_bytes_loaded"] < m["dense"]["kv_bytes_loaded"]
    assert m["bilevel"]["kv_bytes_read_repeat"] < m["bilevel"]["kv_bytes_loaded"]       # H set hot: only L read
    assert {0, 3} <= set(m["bilevel"]["l_chunks"]) and len(m["bilevel"]["l_chunks"]) <= 3

    # re-prefill: full fits at 1 minute (it is the baseline), chunk-based ran too; each re-read the video
    rp = r["reprefill"]
    assert r["reprefill_baseline"] == "full" and set(rp) == {"full", "chunk"}
    for x in rp.values():
        assert x["frames"] == 60 and x["chunks"] == 4 and x["vision_calls"] == 4 and x["repeats"] == 1
        assert 0 < x["decode_sample_ms"] < x["ttft_ms"] <= x["total_ms"]
    assert rp["full"]["context_tokens"] > rp["chunk"]["context_tokens"]    # all visual tokens vs L-KVs
    assert r["reprefill_ttft_ms"] == rp["full"]["ttft_ms"] and r["reprefill_total_ms"] == rp["full"]["total_ms"]

    # the bytes each mode loaded are the store's own: prefix, then L for the chunks it selected
    # and H (visual rows only) for the rest, read back from the KV store independently
    from videokv.engine.chunkkv import TokenKind
    from videokv.kvstore import KVStore
    store = KVStore(res["config"]["home"])
    [rec] = [v for v in store.list_videos() if v.chunks_total == 4]
    records = {c.index: c for c in store.chunk_records(rec.video_id)}

    def h_visual_bytes(i):
        h = store.read_chunk(rec.video_id, i, "H")
        return 2 * h.keys[:, :, h.kinds == TokenKind.VISUAL].nbytes

    for name in bq.MODES:
        l_set = set(m[name]["l_chunks"]) if name != "sparse" else set()
        if name == "dense":
            l_set = set(range(4))
        expected = records[-1].nbytes["full"] + sum(
            records[i].nbytes["L"] if i in l_set else h_visual_bytes(i) for i in range(4))
        assert m[name]["kv_bytes_loaded"] == expected, name
    bilevel, dense = m["bilevel"]["kv_bytes_loaded"], m["dense"]["kv_bytes_loaded"]
    assert r["bytes_ratio_bilevel_vs_dense"] == pytest.approx(bilevel / dense, abs=1e-4)
    assert 0 < r["bytes_ratio_sparse_vs_dense"] < r["bytes_ratio_bilevel_vs_dense"] < 1
    assert r["ttft_speedup_vs_reprefill"] > 1          # the re-prefill re-reads the video: slower

    # the breakdown adds up to the measured bytes
    bd = r["bytes_breakdown"]
    assert bd["bilevel"]["total"] == m["bilevel"]["kv_bytes_loaded"] == sum(
        v for k, v in bd["bilevel"].items() if k != "total")
    assert bd["dense"]["total"] == dense == sum(v for k, v in bd["dense"].items() if k != "total")
    assert bd["sparse_total"] == m["sparse"]["kv_bytes_loaded"]
    assert len(bd["top_k"]) == 1 and set(bd["first_last_added"]) <= {0, 3}
    assert set(bd["top_k"]) | set(bd["first_last_added"]) == set(m["bilevel"]["l_chunks"])
    assert bd["ratios"]["bilevel_vs_dense"] == r["bytes_ratio_bilevel_vs_dense"]
    assert bd["timestamp_tokens_per_chunk"]["min"] >= 5 and bd["bilevel"]["timestamp_text"] > 0
    assert bd["ratios"]["visual_only_top_k_without_first_last"] <= bd["ratios"]["visual_only"] < 1
    assert set(r["correct"]) == {"bilevel", "dense", "sparse", "reprefill_full", "reprefill_chunk"}
    assert res["targets"]["bytes_ratio_le_0.15"]["1.0"]["value"] == r["bytes_ratio_bilevel_vs_dense"]

    with Image.open(out.with_suffix(".png")) as im:
        assert im.format == "PNG" and im.size[0] > 800
    assert "| 1 min | 4 |" in out.with_suffix(".md").read_text()
    printed = capsys.readouterr().out
    assert "speedup" in printed and "bilevel/dense" in printed


def test_toy_videos_are_reused_by_spec(tmp_path):
    p1, t1, reused1, s1 = _common.toy_video(tmp_path, 0.2, 3, 1.0, 16.0)
    p2, t2, reused2, s2 = _common.toy_video(tmp_path, 0.2, 3, 1.0, 16.0)
    assert not reused1 and reused2 and p1 == p2 and t1 == t2 and s1 > 0 == s2
    assert t1["video"]["n_frames"] == 12 and t1["spec"]["events"] == _common.n_events_for(0.2)
    p3, _, reused3, _ = _common.toy_video(tmp_path, 0.2, 4, 1.0, 16.0)
    assert p3 != p1 and not reused3
    q = _common.pick_question(t1)
    assert q["question"] and (q["type"] == "retrieval" or not any(x["type"] == "retrieval" for x in t1["questions"]))
    t1["spec"]["events"] += 1                          # a video made for another spec is not reused
    (tmp_path / p1.with_suffix(".json").name).write_text(json.dumps(t1))
    _, _, reused4, _ = _common.toy_video(tmp_path, 0.2, 3, 1.0, 16.0)
    assert not reused4
