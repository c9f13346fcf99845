import math

import pytest
import torch

from videokv.engine.prefill import timestamp_text
from videokv.kvstore import Status
from videokv.query.budget import Layout
from videokv.query.engine import QueryError

QUESTION = "What digit was shown on the red card?"


def test_ingest_result_and_catalog(ingested, toy_video):
    rt, res = ingested
    rec = rt.store.get_video(res.video_id)
    assert rec.status is Status.READY and res.status == "READY"
    assert res.chunks_total == rec.chunks_total == 6 and res.chunks_prefilled == 6
    assert [s.frame_start for s in rec.plan] == [0, 16, 32, 48, 64, 80]
    assert rec.plan[1].t_start == pytest.approx(16.0, abs=0.3)
    assert res.frames_per_s > 0 and res.tokens_per_s == pytest.approx(res.frames_per_s * 8, rel=1e-6)


def test_same_file_again_is_deduplicated(ingested, toy_video):
    rt, res = ingested
    calls = rt.backend.vision_calls
    again = rt.pipeline.ingest(toy_video[0])
    assert again.deduplicated and again.video_id == res.video_id and again.chunks_prefilled == 0
    assert rt.backend.vision_calls == calls


def test_ask_runs_no_video_prefill(ingested):
    rt, res = ingested
    before = rt.backend.vision_calls
    ans = rt.queries.ask(res.video_id, QUESTION, max_new_tokens=4)
    assert ans.video_prefill_runs == 0 and rt.backend.vision_calls == before
    assert ans.answer and ans.context_tokens > 0
    assert set(ans.timings) == {"retrieve_ms", "load_ms", "prefill_ms", "decode_ms", "ttft_ms"}
    assert ans.timings["ttft_ms"] >= ans.timings["load_ms"]
    assert {e.level for e in ans.evidence} == {"L"}
    # top-1 hit plus the always-included first and last chunks
    assert {0, 5} <= {e.chunk for e in ans.evidence} and len(ans.evidence) <= 3


def expected_context_bytes(rt, rec, levels, h_text="drop"):
    """KV bytes the compression config predicts for `levels` (chunk -> "L"/"H"): H chunks
    come without their timestamp rows unless h_text is "keep"."""
    be, cfg = rt.backend, rt.config
    per_token = 2 * be.num_layers * be.num_kv_heads * be.head_dim * 4  # K and V, fp32
    prefix_tokens = rt.store.read_chunk(rec.video_id, -1, "full").tokens
    total = prefix_tokens
    for span in rec.plan:
        text = len(be.tokenize(timestamp_text(span.t_start)))
        visual = (span.frame_end - span.frame_start) * cfg.tokens_per_frame
        is_l = levels[span.index] == "L"
        ratio = cfg.l_kv.ratio if is_l else cfg.h_kv.ratio
        total += (text if is_l or h_text == "keep" else 0) + math.ceil(visual / ratio)
    return total * per_token


def test_bilevel_bytes_between_sparse_and_dense_as_predicted(ingested):
    rt, res = ingested
    rec = rt.store.get_video(res.video_id)
    got = {m: rt.queries.ask(res.video_id, QUESTION, mode=m, max_new_tokens=1) for m in ("dense", "bilevel", "sparse")}
    selected = {e.chunk for e in got["bilevel"].evidence}
    predicted = {
        "dense": expected_context_bytes(rt, rec, {i: "L" for i in range(6)}),
        "sparse": expected_context_bytes(rt, rec, {i: "H" for i in range(6)}),
        "bilevel": expected_context_bytes(rt, rec, {i: "L" if i in selected else "H" for i in range(6)}),
    }
    for mode in got:
        assert got[mode].kv_bytes_loaded == predicted[mode], mode
    assert got["sparse"].kv_bytes_loaded < got["bilevel"].kv_bytes_loaded < got["dense"].kv_bytes_loaded


def test_h_parts_are_paged_without_text_rows_unless_kept(ingested):
    from videokv.engine.chunkkv import TokenKind
    from videokv.query.hotset import HotSetCache
    from videokv.query.pager import KVPager
    rt, res = ingested
    rec = rt.store.get_video(res.video_id)
    levels = {i: "L" if i in (0, 3) else "H" for i in range(6)}
    kinds = {}
    for h_text in ("drop", "keep"):
        paged = KVPager(HotSetCache(rt.store, rt.queries.fingerprint, h_text=h_text)).load(res.video_id, Layout.of(levels))
        assert paged.bytes_in_context == expected_context_bytes(rt, rec, levels, h_text)
        kinds[h_text] = [int((p.kinds == TokenKind.TEXT).sum()) for p in paged.parts[1:]]
    stored = rt.store.read_chunk(res.video_id, 1, "H")      # the stored H-KV keeps its timestamp
    assert kinds["keep"][1] == int((stored.kinds == TokenKind.TEXT).sum()) > 0
    assert all(n > 0 for n in kinds["keep"])
    assert [n > 0 for n in kinds["drop"]] == [levels[i] == "L" for i in range(6)]
    # the visual rows are the stored ones, in order
    h = KVPager(HotSetCache(rt.store, rt.queries.fingerprint)).load(res.video_id, Layout.of(levels)).parts[2]
    stored = rt.store.read_chunk(res.video_id, 1, "H")
    vis = stored.kinds == TokenKind.VISUAL
    assert torch.equal(h.keys, stored.keys[:, :, vis]) and torch.equal(h.values, stored.values[:, :, vis])
    with pytest.raises(ValueError, match="h_text must be one of"):
        HotSetCache(rt.store, rt.queries.fingerprint, h_text="some")


def test_h_parts_of_chunks_with_a_text_line_keep_their_text_rows(ingested):
    from videokv.engine.chunkkv import TokenKind
    from videokv.query.hotset import HotSetCache
    from videokv.query.pager import KVPager
    rt, res = ingested
    old = rt.store.get_video(res.video_id).extra
    levels = {i: "L" if i == 0 else "H" for i in range(6)}
    try:
        rt.store.update_video(res.video_id, extra={**(old or {}), "text_chunks": [2, 4]})
        paged = KVPager(HotSetCache(rt.store, rt.queries.fingerprint)).load(res.video_id, Layout.of(levels))
        with_text = [i for i, p in enumerate(paged.parts[1:]) if (p.kinds == TokenKind.TEXT).any()]
        assert with_text == [0, 2, 4]                     # the L chunk, and the H chunks with a line
        assert paged.parts[3].tokens == rt.store.read_chunk(res.video_id, 2, "H").tokens
    finally:
        rt.store.update_video(res.video_id, extra=old)


def test_hot_video_reads_only_its_selected_l_kvs(ingested):
    rt, res = ingested
    rt.queries.pager.evict(res.video_id)
    cold = rt.queries.ask(res.video_id, QUESTION, max_new_tokens=1)
    warm = rt.queries.ask(res.video_id, QUESTION, max_new_tokens=1)
    with rt.store.reader() as r:                  # bytes read: as stored (a codec's are fewer)
        l_bytes = sum(r.blob(res.video_id, e.chunk, "L").nbytes for e in warm.evidence)
    assert warm.kv_bytes_read == l_bytes < cold.kv_bytes_read


@pytest.mark.parametrize("kwargs,match", [({"mode": "fast"}, "mode must be one of"), ({"top_k": -1}, "top_k"),
                                          ({"question": "  "}, "empty")])
def test_bad_questions_are_clear_errors(ingested, kwargs, match):
    rt, res = ingested
    q = kwargs.pop("question", QUESTION)
    with pytest.raises(QueryError, match=match):
        rt.queries.ask(res.video_id, q, **kwargs)


def test_unknown_video_is_not_found(ingested):
    from videokv.kvstore import VideoNotFoundError
    rt, _ = ingested
    with pytest.raises(VideoNotFoundError):
        rt.queries.ask("nope", QUESTION)


def test_dense_beyond_the_models_positions_is_refused_not_answered(ingested, monkeypatch):
    """Dense mode on a video whose L-KVs do not fit the model's positions answered garbage
    with a 200; it is refused now (ContextTooLong, a 422 in the API), bilevel still answers."""
    from videokv.query.engine import ContextTooLong

    rt, res = ingested
    bilevel = rt.queries.ask(res.video_id, QUESTION, max_new_tokens=4)
    dense = rt.queries.ask(res.video_id, QUESTION, mode="dense", max_new_tokens=4)
    limit = (bilevel.context_tokens + dense.context_tokens) // 2 + 40       # bilevel fits, dense does not
    monkeypatch.setattr(rt.backend.config, "max_position_embeddings", limit)
    with pytest.raises(ContextTooLong, match=f"and the model has {limit}: ask in bilevel mode") as e:
        rt.queries.ask(res.video_id, QUESTION, mode="dense", max_new_tokens=4)
    assert e.value.http_status == 422 and e.value.code == "context_too_long"
    assert rt.queries.ask(res.video_id, QUESTION, max_new_tokens=4).answer == bilevel.answer
