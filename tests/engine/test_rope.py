import pytest
import torch

from videokv.models.tiny import tiny_backend


@pytest.mark.parametrize("arch,rope", [("llama", "default"), ("llama", "llama3"), ("qwen2", "yarn")])
def test_rotate_unrotate_round_trip(tokenizer, arch, rope):
    rot = tiny_backend(tokenizer, arch, rope).rotary
    if rope == "yarn":
        assert rot.scaling != 1.0  # the attention scaling must survive the round trip
    k = torch.randn(2, 2, 50, 16)
    pos = torch.arange(1000, 1050)
    back = rot.unrotate(rot.rotate(k, pos), pos)
    assert torch.allclose(back, k, atol=1e-5)
    # rotation is relative: re-rotating a key captured at p to q equals rotating by q directly
    assert torch.allclose(rot.rotate(rot.unrotate(rot.rotate(k, pos), pos), pos - 1000), rot.rotate(k, pos - 1000), atol=1e-5)
    # and it is not the identity
    assert not torch.allclose(rot.rotate(k, pos), k, atol=1e-2)


def test_rotate_matches_the_models_own_cache(tokenizer):
    """Our rotation of a pre-RoPE key equals what the model itself caches: the keys of layer 0
    are computed here from the input (k_proj of the normed input, before any rotation) and
    rotated by `Rotary.rotate`; the model's own forward caches the same values (yarn: its
    attention scaling included)."""
    be = tiny_backend(tokenizer, "qwen2", "yarn")
    x = torch.randn(7, be.hidden_size)
    cache = be.make_cache()
    be.forward(torch.randn(5, be.hidden_size), cache, logits=False)
    out = be.forward(x, cache, logits=False)
    layer = be.decoder.layers[0]
    with torch.no_grad():
        pre = layer.self_attn.k_proj(layer.input_layernorm(x))                     # [7, kv_heads * D]
    pre = pre.view(7, be.num_kv_heads, be.head_dim).transpose(0, 1)                # [kv_heads, 7, D]
    pos = torch.arange(5, 12)
    assert torch.allclose(be.rotary.rotate(pre, pos), out.keys[0], atol=1e-5)
    assert not torch.allclose(pre, out.keys[0], atol=1e-3)                        # it did rotate them
    assert torch.allclose(be.rotary.unrotate(out.keys[0], pos), pre, atol=1e-5)
