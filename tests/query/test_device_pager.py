"""The GPU fast path's logic, run on the CPU (pinning and streams off): the device pager
assembles exactly the cache the CPU path does, reuses its staging buffer across questions,
and the on-device prefill yields exactly what the host prefill does."""

import numpy as np
import pytest
import torch

from videokv.engine.chunkkv import TokenKind
from videokv.engine.config import CompressionConfig, EngineConfig, PrefillConfig
from videokv.engine.decode import assemble
from videokv.engine.prefill import ChunkPrefiller
from videokv.engine.prefill_device import DevicePrefill
from videokv.ingest.pipeline import frames_to_tensor
from videokv.models.selftest import random_chunks
from videokv.models.tiny import tiny_backend
from videokv.query.budget import Layout
from videokv.query.device_pager import DevicePager, StagingBuffer, gather_rotate
from videokv.query.hotset import HotSetCache, h_rows, stored_bytes
from videokv.query.pager import KVPager


def _same_cache(a, b):
    assert a.spans == b.spans and a.next_pos == b.next_pos
    assert a.keys.dtype == b.keys.dtype and a.keys.shape == b.keys.shape
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_device_pager_matches_cpu_path_and_reuses_staging(ingested):
    rt, res = ingested
    q = rt.queries
    assert q.fast is None                                   # CPU: the engine keeps the CPU path
    n = rt.store.get_video(res.video_id).chunks_total
    q.hot.evict(res.video_id)
    dp = DevicePager(q.hot, rt.backend, device="cpu", pin=False, groups=3)     # the engine's hot-set cache
    assert not dp.pin and dp.copy_stream is None
    layouts = [{i: "H" for i in range(n)}, {i: ("L" if i in (0, 2, n - 1) else "H") for i in range(n)},
               {i: "L" for i in range(n)}, {i: ("L" if i in (1, n - 1) else "H") for i in range(n)}]
    ptrs = []
    for j, levels in enumerate(layouts):
        got = dp.load(res.video_id, Layout.of(levels))
        paged = q.pager.load(res.video_id, Layout.of(levels))
        _same_cache(got.cache, assemble(rt.backend, paged.parts))
        assert got.bytes_in_context == paged.bytes_in_context
        n_l = sum(v == "L" for v in levels.values())
        with rt.store.reader() as r:                          # bytes read: as stored (int8 by default)
            l_bytes = sum(r.blob(res.video_id, p.index, "L").nbytes for p in paged.parts[1:] if p.level == "L")
            hot_bytes = r.blob(res.video_id, -1, "full").nbytes + sum(     # H parts: visual rows only
                stored_bytes(v, (v.kinds == TokenKind.VISUAL).nonzero().flatten())
                for v in (r.blob(res.video_id, i, "H") for i in range(n)))
        assert got.bytes_read == (hot_bytes if j == 0 else 0) + (l_bytes if n_l else 0)
        assert paged.bytes_read == (l_bytes if n_l else 0)        # one cache: the CPU pager found it hot
        # L parts go to the device as stored (int8 codes + float16 statistics), not decoded
        staged = got.bytes_shipped - q.hot.get(res.video_id)[0].nbytes
        l_parts = [p for p in paged.parts[1:] if p.level == "L"]
        decoded = sum(p.nbytes for p in l_parts)
        assert l_bytes <= staged <= l_bytes + 4 * sum(p.tokens for p in l_parts) + 64 * 5 * len(l_parts)
        assert staged <= decoded / 3
        ptrs.append(dp.staging.data_ptr())
    # grown by the first L question and by the all-L one; the smaller one after it reused it
    assert ptrs[0] == 0 and dp.staging.grows == 2 and ptrs[2] == ptrs[3] != 0 and dp.staging.reuses == 1
    dp.evict(res.video_id)
    assert res.video_id not in q.hot and dp.load(res.video_id, Layout.of(layouts[0])).bytes_read > 0
    # with the H parts' text rows kept, both paths agree too
    kept = HotSetCache(rt.store, q.fingerprint, h_text="keep")
    got = DevicePager(kept, rt.backend, device="cpu", pin=False).load(res.video_id, Layout.of(layouts[1]))
    paged = KVPager(kept).load(res.video_id, Layout.of(layouts[1]))
    _same_cache(got.cache, assemble(rt.backend, paged.parts))
    assert got.bytes_in_context == paged.bytes_in_context > q.pager.load(res.video_id, Layout.of(layouts[1])).bytes_in_context


def test_layouts_with_the_gist_level_page_alike_on_both_paths(tmp_path, toy_video, embedded_backend):
    """A pyramid layout (L, H, G parts and a chunk left out) pages from the G hot set plus the
    staged L and H parts; the device path assembles exactly what the CPU path does, and a G
    part is its group's H-KVs' visual rows pooled (engine.compress.gist)."""
    from tests.conftest import make_runtime
    from videokv.engine.compress import gist

    # codec none: a G part is then bit for bit its group's pooled H rows (with a lossy codec the
    # stored G and H parts are each within the codec's bound of the computed ones).
    rt = make_runtime(tmp_path / "home", gist_chunks=2, kv_codec="none")   # 6 chunks: groups 0, 2, 4
    rt.backend = embedded_backend
    vid = rt.pipeline.ingest(toy_video[0]).video_id
    store = rt.store
    g2 = store.read_chunk(vid, 2, "G")
    ref = gist([store.read_chunk(vid, i, "H") for i in (2, 3)], rt.config.gist_ratio)
    assert torch.equal(g2.keys, ref.keys) and torch.equal(g2.values, ref.values) and g2.tokens == 2   # 2 x 8 H rows / 8
    q = rt.queries
    layout = Layout.of({0: "L", 1: "H", 2: "G", 5: "L"}, group=2)        # chunk 4 left out
    assert layout.levels() == {"L": 2, "H": 1, "G": 2, "dropped": 1}
    paged = q.pager.load(vid, layout)
    assert [(p.index, p.level) for p in paged.parts] == [(-1, "full"), (0, "L"), (1, "H"), (2, "G"), (5, "L")]
    assert paged.parts[3].t_end == store.get_video(vid).plan[3].t_end         # a G part spans its group
    assert torch.equal(paged.parts[3].keys, g2.keys)
    assert (paged.parts[2].kinds == TokenKind.VISUAL).all()                     # H without its stamp rows
    dp = DevicePager(q.hot, rt.backend, device="cpu", pin=False, groups=2)
    got = dp.load(vid, layout)
    _same_cache(got.cache, assemble(rt.backend, paged.parts))
    assert got.bytes_in_context == paged.bytes_in_context
    assert got.bytes_read == sum(p.nbytes for p in paged.parts[1:] if p.level != "G")   # G hot, the rest staged


def test_a_cast_codec_ships_its_narrower_floats(tmp_path, toy_video, embedded_backend):
    """bf16-stored parts go to the device as bfloat16 (half of float32's bytes) and are cast
    inside the gather: the same cache as the CPU path's."""
    from tests.conftest import make_runtime

    rt = make_runtime(tmp_path / "home", kv_codec="bf16")
    rt.backend = embedded_backend
    vid = rt.pipeline.ingest(toy_video[0]).video_id
    q = rt.queries
    layout = Layout.of({0: "L", 1: "H", 2: "L", 3: "H", 4: "H", 5: "L"})
    paged = q.pager.load(vid, layout)
    dp = DevicePager(q.hot, rt.backend, device="cpu", pin=False)
    got = dp.load(vid, layout)
    _same_cache(got.cache, assemble(rt.backend, paged.parts))
    decoded = sum(p.nbytes for p in paged.parts[1:] if p.level == "L")
    assert got.bytes_shipped - q.hot.get(vid)[0].nbytes == decoded // 2


def test_staging_buffer_grows_geometrically_and_views_typed():
    s = StagingBuffer(pin=False)
    a = s.take((2, 3, 4), torch.float32)
    assert a.shape == (2, 3, 4) and a.dtype == torch.float32 and s.grows == 1 and s.nbytes == 1 << 20
    p = s.data_ptr()
    b = s.take((10, 10), torch.bfloat16)
    assert b.data_ptr() == p and s.grows == 1 and s.reuses == 1
    c = s.take(((1 << 20) // 2 + 1,), torch.float32)          # > 1 MiB: grows to fit
    assert s.grows == 2 and s.nbytes >= c.numel() * 4


def test_gather_rotate_equals_rotate_then_scatter(tokenizer):
    be = tiny_backend(tokenizer, "qwen2", "yarn")
    g = torch.Generator().manual_seed(0)
    src = torch.randn(2, 2, 10, 16, generator=g)
    idx, dst = torch.tensor([7, 1, 4]), torch.tensor([0, 2, 1])
    pos = torch.tensor([5, 9, 6])
    cos, sin = be.rotary.cos_sin(pos, "cpu")
    out_k, out_v = torch.zeros(2, 2, 3, 16), torch.zeros(2, 2, 3, 16)
    gather_rotate(src, src + 1, idx, cos, sin, out_k, out_v, dst)
    ref = be.rotary.rotate(src[:, :, idx], pos)
    assert torch.equal(out_k[:, :, dst], ref) and torch.equal(out_v[:, :, dst], (src + 1)[:, :, idx])


def test_device_prefill_yields_what_host_prefill_does(tokenizer):
    be = tiny_backend(tokenizer, "qwen2")
    for policy in ("avgpool", "attention"):
        cfg = EngineConfig(l_kv=CompressionConfig(policy, 2), h_kv=CompressionConfig(policy, 8),
                           prefill=PrefillConfig(window=2, window_level="H", prev_level="L"))
        pre = ChunkPrefiller(be, cfg)
        prefix = pre.prefix()
        chunks = random_chunks(be, 5, tokens=32)
        host = list(pre.run(prefix, iter(chunks), device_path=False))
        dev = list(pre.run(prefix, iter(chunks), device_path=True))
        # resuming from stored history takes the same path
        resumed = list(pre.run(prefix, iter(chunks[3:]), history=host[:3], device_path=True))
        assert [d.L.index for d in dev] == list(range(5))
        for a, b in zip(host, dev):
            for lvl in ("L", "H"):
                x, y = a.level(lvl), b.level(lvl)
                assert torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values), (policy, lvl)
                assert torch.equal(x.kinds, y.kinds) and y.keys.device.type == "cpu"
        for a, b in zip(host[3:], resumed):
            assert torch.equal(a.L.keys, b.L.keys) and torch.equal(a.H.values, b.H.values)


def test_batched_vision_inputs_match_per_chunk(ingested, toy_video, monkeypatch):
    from videokv.ingest import writer as W
    from videokv.ingest.sampling import iter_frames
    from videokv.ingest.stream import stream_chunks
    from videokv.ingest.text import TextOptions
    from videokv.ingest.video import probe

    rt, _ = ingested
    path = toy_video[0]
    info = probe(path)
    w = W.StreamWriter(rt.pipeline, "unused", path, info, TextOptions(), 1.0)
    assert not w.batch_vision                              # CPU: one tower call per chunk, as before
    w.batch_vision, w.wants_frames = True, True
    monkeypatch.setattr(W, "VISION_BATCH_FRAMES", 40)     # groups of 3 chunks (48 frames), then the rest
    chunks = list(stream_chunks(iter_frames(path, 1.0, size=rt.backend.vision.input_size, info=info), 16,
                                info.duration, 1.0))
    assert len(chunks) == 6
    calls = rt.backend.vision_calls
    got = [ci for group in w.vision_groups(iter(chunks)) for ci in w.chunk_inputs(group)]
    assert rt.backend.vision_calls - calls == 2 and sorted(w.pending) == list(range(len(chunks)))
    for cf, ci in zip(chunks, got):
        ref = rt.backend.vision_tokens(frames_to_tensor(cf.frames))
        assert ci.index == cf.span.index and (ci.frame_start, ci.frame_end) == (cf.span.frame_start, cf.span.frame_end)
        assert torch.allclose(ci.visual, ref.reshape(-1, ref.shape[-1]), atol=1e-5)
    assert np.isclose(got[1].t_start, chunks[1].span.t_start)


def test_window0_chunks_packed_into_one_forward_match_one_by_one(tokenizer):
    be = tiny_backend(tokenizer, "llama")
    for policy in ("avgpool", "attention"):
        cfg = EngineConfig(l_kv=CompressionConfig(policy, 2), h_kv=CompressionConfig(policy, 8),
                           prefill=PrefillConfig(window=0))
        pre = ChunkPrefiller(be, cfg)
        assert DevicePrefill(pre).packable()
        prefix = pre.prefix()
        chunks = random_chunks(be, 5, tokens=24)
        chunks[-1].visual = chunks[-1].visual[:10]                     # a shorter last chunk
        for c in chunks:
            c.t_start = 10.0 ** c.index                                # timestamps of different lengths
        host = list(pre.run(prefix, iter(chunks), device_path=False))
        calls = []
        fwd = be.forward
        be.forward = lambda *a, **k: calls.append(k.get("mask") is not None) or fwd(*a, **k)
        pre.pack_tokens = 90                                           # -> forwards of 2 + 2 + 1 chunks
        try:
            packed = list(pre.run(prefix, iter(chunks), device_path=True))
        finally:
            be.forward = fwd
        assert calls == [True, True, True]
        assert [p.L.index for p in packed] == list(range(5))
        for a, b in zip(host, packed):
            for lvl in ("L", "H"):
                x, y = a.level(lvl), b.level(lvl)
                assert torch.equal(x.kinds, y.kinds) and x.keys.shape == y.keys.shape
                assert torch.allclose(x.keys, y.keys, atol=1e-5) and torch.allclose(x.values, y.values, atol=1e-5)


@pytest.mark.parametrize("name,key_group,value_group", [("int8", 0, 0), ("int8", 8, 4), ("int4", 0, 0),
                                                          ("int4", 5, 8), ("fp8", 0, 0), ("fp8", 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_device_dequantization_equals_the_codecs_own_decode(tokenizer, name, key_group, value_group, dtype):
    """Rows shipped as stored (codes, scales, minima of three blobs of different lengths, some
    rows of each) and dequantized inside the fused gather + rotate give exactly what decoding
    each blob on the host (Codec.decode_into) and then gather_rotate give."""
    from videokv.kvstore.codecs import codec_named
    from videokv.kvstore.packed import PackedRows, packed_specs, payload_of
    from videokv.query.device_pager import dequant_gather_rotate

    be = tiny_backend(tokenizer, "qwen2", "yarn")
    codec = codec_named(name, key_group, value_group)
    g = torch.Generator().manual_seed(3)
    L, H, D = 2, 2, 16
    blobs = [torch.randn(L, 2, H, T, D, generator=g) * 3 + 0.5 for T in (7, 12, 3)]
    payloads = [codec.encode(kv) for kv in blobs]
    picks = [torch.tensor([6, 0, 3]), None, torch.tensor([2])]
    ns = [kv.shape[3] if r is None else len(r) for kv, r in zip(blobs, picks)]
    gs = [-(-kv.shape[3] // codec.groups(kv.shape[3], D)[0]) for kv in blobs]
    tensors = [torch.zeros(s, dtype=t) for t, s in packed_specs(codec, L, H, sum(ns), sum(gs), D)]
    packed = PackedRows(codec, *payload_of(codec, tensors), torch.zeros(sum(ns), dtype=torch.int32))
    ref, off, goff = [], 0, 0
    for kv, parts, rows, n, gn in zip(blobs, payloads, picks, ns, gs):       # as the pager stages them
        codes, ks, km, vs, vm = payload_of(codec, parts)
        at = torch.arange(kv.shape[3]) if rows is None else rows
        packed.codes[:, :, :, off:off + n] = codes.index_select(3, at)
        packed.key_scale[:, :, goff:goff + gn] = ks
        packed.value_scale[:, :, off:off + n] = vs.index_select(2, at)
        if km is not None:
            packed.key_min[:, :, goff:goff + gn] = km
            packed.value_min[:, :, off:off + n] = vm.index_select(2, at)
        packed.key_group[off:off + n] = at // codec.groups(kv.shape[3], D)[0] + goff
        ref.append(codec.decode_into(parts, torch.empty(L, 2, H, n, D, dtype=dtype), rows))
        off, goff = off + n, goff + gn
    ref = torch.cat(ref, dim=3)
    idx = torch.tensor([9, 0, 4, 13, 2])                     # context order != staged order
    dst = torch.tensor([1, 4, 0, 2, 3])
    cos, sin = be.rotary.cos_sin(torch.tensor([40, 3, 17, 8, 25]), "cpu")
    want_k, want_v = torch.zeros(L, H, 5, D, dtype=dtype), torch.zeros(L, H, 5, D, dtype=dtype)
    gather_rotate(ref[:, 0], ref[:, 1], idx, cos, sin, want_k, want_v, dst)
    got_k, got_v = torch.zeros_like(want_k), torch.zeros_like(want_v)
    p = packed
    dequant_gather_rotate(p.codes, p.key_scale, p.key_min, p.value_scale, p.value_min, p.key_group, name,
                          idx, cos, sin, got_k, got_v, dst)
    assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
    assert (want_v != 0).all()


def test_h_rows_are_a_slice_when_they_are_one_run():
    """An H part's visual rows after its leading timestamp rows: a slice (read as a view);
    rows with text between them: their indices; a chunk with a text line or "keep": all."""
    T, V = TokenKind.TEXT, TokenKind.VISUAL
    lead = torch.tensor([T, T, T, V, V, V, V], dtype=torch.uint8)
    assert h_rows(lead, "drop") == slice(3, 7)
    mixed = torch.tensor([T, V, V, T, V], dtype=torch.uint8)
    assert torch.equal(h_rows(mixed, "drop"), torch.tensor([1, 2, 4]))
    assert h_rows(lead, "keep") is None and h_rows(lead, "drop", has_line=True) is None

