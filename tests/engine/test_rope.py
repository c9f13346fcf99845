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
    """Keys the model caches at positions p, un-rotated, then rotated by p again, are identical."""
    be = tiny_backend(tokenizer, "qwen2", "yarn")
    x = torch.randn(7, be.hidden_size)
    cache = be.make_cache()
    be.forward(torch.randn(5, be.hidden_size), cache, logits=False)
    out = be.forward(x, cache, logits=False)
    pos = torch.arange(5, 12)
    pre = be.rotary.unrotate(out.keys, pos)
    assert torch.allclose(be.rotary.rotate(pre, pos), out.keys, atol=1e-5)
