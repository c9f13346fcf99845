import math

import pytest
import torch

from videokv.engine.chunkkv import ChunkKV, TokenKind
from videokv.engine.compress import POLICIES, AvgPool, Stride, make_policy
from videokv.engine.config import CompressionConfig, EngineConfig
from videokv.engine.prefill import ChunkInput, ChunkPrefiller
from videokv.models.tiny import tiny_backend


def make_chunk(n_text=5, n_vis=70, L=3, H=2, D=8):
    kinds = torch.tensor([TokenKind.TEXT] * n_text + [TokenKind.VISUAL] * n_vis, dtype=torch.uint8)
    T = n_text + n_vis
    return ChunkKV(torch.randn(L, H, T, D), torch.randn(L, H, T, D), kinds, index=3, t_start=6.0, t_end=8.0)


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("ratio", [2, 3, 16])
def test_policies_keep_configured_counts_and_all_text(name, ratio):
    chunk = make_chunk()
    policy = make_policy(CompressionConfig(name, 1 if name == "identity" else ratio))
    att = torch.rand(chunk.layers, chunk.kv_heads, chunk.tokens)
    out = policy.compress(chunk, "H", att)
    expect_vis = 70 if name == "identity" else math.ceil(70 / ratio)
    assert out.tokens == 5 + expect_vis
    assert int((out.kinds == TokenKind.VISUAL).sum()) == expect_vis
    # timestamp tokens survive bit-exact, first, in order
    assert torch.equal(out.keys[:, :, :5], chunk.keys[:, :, :5])
    assert torch.equal(out.values[:, :, :5], chunk.values[:, :, :5])
    assert (out.kinds[:5] == TokenKind.TEXT).all()
    assert (out.index, out.t_start, out.level) == (3, 6.0, "H")


def test_avgpool_is_group_means_with_short_last_group():
    chunk = make_chunk(n_text=2, n_vis=7)
    out = AvgPool(ratio=3).compress(chunk, "L")
    vis = chunk.keys[:, :, 2:]
    assert torch.allclose(out.keys[:, :, 2], vis[:, :, 0:3].mean(2), atol=1e-6)
    assert torch.allclose(out.keys[:, :, 4], vis[:, :, 6], atol=1e-6)  # last group holds one token


def test_stride_keeps_every_rth_token():
    chunk = make_chunk(n_text=1, n_vis=10)
    out = Stride(ratio=4).compress(chunk, "H")
    assert torch.equal(out.values[:, :, 1:], chunk.values[:, :, 1:][:, :, [0, 4, 8]])


def test_score_policies_select_by_score():
    chunk = make_chunk(n_text=0, n_vis=8, L=1, H=1)
    att = torch.zeros(1, 1, 8)
    att[0, 0, [1, 6]] = 1.0
    out = POLICIES["attention"](ratio=4).compress(chunk, "H", att)
    assert torch.equal(out.keys[0, 0], chunk.keys[0, 0, [1, 6]])
    norms = chunk.keys[0, 0].norm(dim=-1)
    out = POLICIES["knorm"](ratio=4).compress(chunk, "H")
    assert set(out.keys[0, 0].norm(dim=-1).tolist()) == set(norms.sort().values[:2].tolist())


def test_attention_policy_runs_inside_prefill(tokenizer):
    be = tiny_backend(tokenizer)
    cfg = EngineConfig(l_kv=CompressionConfig("attention", 2), h_kv=CompressionConfig("knorm", 8))
    pre = ChunkPrefiller(be, cfg)
    prefix = pre.prefix()
    chunk = ChunkInput(0, torch.randn(32, be.hidden_size) * 0.1)
    done = next(pre.run(prefix, [chunk]))
    n_text = int((done.L.kinds == TokenKind.TEXT).sum())
    assert done.L.tokens == n_text + 16 and done.H.tokens == n_text + 4


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown compression policy 'zip'"):
        make_policy(CompressionConfig("zip", 2))
