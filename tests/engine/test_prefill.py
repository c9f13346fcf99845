import pytest
import torch

from videokv.bench.memtrack import PeakTensorMemory
from videokv.engine.batch import generate
from videokv.engine.config import CompressionConfig, EngineConfig, PrefillConfig
from videokv.engine.decode import GenerationConfig, assemble, question_logits
from videokv.engine.prefill import ChunkPrefiller
from videokv.models.selftest import random_chunks
from videokv.models.tiny import tiny_backend


def peak_prefill_bytes(be, n_chunks, window):
    cfg = EngineConfig(prefill=PrefillConfig(window=window, window_level="H"))
    pre = ChunkPrefiller(be, cfg)
    prefix = pre.prefix()
    chunks = random_chunks(be, n_chunks, tokens=64)
    for c in chunks:  # same digit count in every "Time t:" so only the context could grow
        c.t_start = 100.0 + c.index
    with torch.no_grad(), PeakTensorMemory() as mem:
        for done in pre.run(prefix, iter(chunks)):
            del done  # the consumer (the store) takes each chunk away
    return mem.peak_bytes


def test_prefill_peak_memory_is_flat_with_a_fixed_window(tokenizer):
    be = tiny_backend(tokenizer)
    p8, p64 = peak_prefill_bytes(be, 8, window=2), peak_prefill_bytes(be, 64, window=2)
    assert p8 > 0
    assert p64 == p8, (p8, p64)
    # the measurement can see growth: with all earlier chunks in context it grows
    assert peak_prefill_bytes(be, 64, window=-1) > 1.5 * peak_prefill_bytes(be, 8, window=-1)


def test_bilevel_mix_decodes_at_contiguous_positions(tokenizer):
    be = tiny_backend(tokenizer, "qwen2", "yarn")
    cfg = EngineConfig(l_kv=CompressionConfig("avgpool", 2), h_kv=CompressionConfig("avgpool", 16),
                       prefill=PrefillConfig(window=2))
    pre = ChunkPrefiller(be, cfg)
    prefix = pre.prefix()
    done = list(pre.run(prefix, random_chunks(be, 5, tokens=64)))
    mix = [prefix] + [d.L if i in (1, 3) else d.H for i, d in enumerate(done)]
    cache = assemble(be, mix)
    N = sum(p.tokens for p in mix)
    assert cache.tokens == N
    # spans tile 0..N-1 with no gap, and the keys sit exactly at those positions
    assert [s[0] for s in cache.spans] == [-1, 0, 1, 2, 3, 4]
    assert cache.spans[0][1] == 0 and all(a[2] == b[1] for a, b in zip(cache.spans, cache.spans[1:]))
    pre_rope = be.rotary.unrotate(cache.keys, torch.arange(N))
    for part, (_, s, e) in zip(mix, cache.spans):
        assert torch.allclose(pre_rope[:, :, s:e], part.keys, atol=1e-5)
    # the question continues at N: its logits differ from a dense (all-L) context, and decode runs
    _, suffix = be.prompt_parts(cfg.system_prompt, "What color was the star?")
    dense = assemble(be, [prefix] + [d.L for d in done])
    assert not torch.allclose(question_logits(be, cache, suffix), question_logits(be, dense, suffix), atol=1e-3)
    pieces = list(generate(be, cache, suffix, GenerationConfig(max_new_tokens=5)))
    assert 1 <= len(pieces) <= 5


def test_out_of_order_chunks_are_refused(tokenizer):
    be = tiny_backend(tokenizer)
    pre = ChunkPrefiller(be, EngineConfig())
    prefix = pre.prefix()
    done = list(pre.run(prefix, random_chunks(be, 2, tokens=16)))
    with pytest.raises(ValueError, match="temporal order"):
        assemble(be, [prefix, done[1].H, done[0].H])


def test_resume_with_history_equals_uninterrupted_run(tokenizer):
    be = tiny_backend(tokenizer)
    pre = ChunkPrefiller(be, EngineConfig(prefill=PrefillConfig(window=2, prev_level="L")))
    prefix = pre.prefix()
    chunks = random_chunks(be, 6, tokens=32)
    straight = list(pre.run(prefix, chunks))
    resumed = list(pre.run(prefix, chunks[4:], history=straight[:4]))
    for a, b in zip(straight[4:], resumed):
        assert torch.allclose(a.H.keys, b.H.keys, atol=1e-6) and torch.allclose(a.L.values, b.L.values, atol=1e-6)
