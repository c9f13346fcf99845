"""The one-pass C dequantizer (kvstore/dequant.c via native.py) against the codecs' torch path:
the same bits (torch.equal on the int32 view, so even the sign of a zero counts)."""

import pytest
import torch

from videokv.kvstore import native
from videokv.kvstore.codecs import codec_named

BLOBS = [(7, None), (13, slice(3, 11)), (5, slice(0, 0)), (20, slice(0, 20))]     # (tokens, rows)


def encoded(codec, blobs=BLOBS, L=3, H=2, D=64, seed=0):
    """[(parts, rows)] of random KVs with an outlier key channel, and their total rows."""
    g = torch.Generator().manual_seed(seed)
    items, total = [], 0
    for T, rows in blobs:
        kv = torch.randn(L, 2, H, T, D, generator=g) * 3
        kv[:, 0, :, :, 5] += 40
        kv[0, :, 0, 0, :4] = torch.tensor([0.0, -0.0, 1e-9, -1e-9])     # zeros of both signs (fp8 keeps them)
        items.append((codec.encode(kv), rows))
        total += T if rows is None else rows.stop - rows.start
    return items, total


def test_the_setup_built_the_kernel():
    assert native.library() is not None, f"scripts/setup.sh builds {native.LIBRARY} (needs a C compiler)"


@pytest.mark.parametrize("name", ["int8", "int4", "fp8"])
@pytest.mark.parametrize("key_group,value_group", [(0, 0), (4, 16)])
def test_equals_the_torch_path_bit_for_bit(name, key_group, value_group):
    codec = codec_named(name, key_group, value_group)
    items, total = encoded(codec)
    # Into a slice of a longer buffer, as a hot set's part is: planes are not back to back.
    buffer = torch.full((3, 2, 2, total + 9, 64), float("nan"))
    got = buffer.narrow(3, 4, total)
    assert native.dequantize_into(codec, items, got)
    want = codec.decode_many_torch(items, torch.empty(3, 2, 2, total, 64))
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert buffer[:, :, :, :4].isnan().all() and buffer[:, :, :, 4 + total:].isnan().all()   # nothing outside
    for parts, rows in items[1:2]:
        one = codec.decode_into(parts, torch.empty(3, 2, 2, 8, 64), rows)
        assert torch.equal(one, codec.decode_into_torch(parts, torch.empty(3, 2, 2, 8, 64), rows))


def test_a_hot_set_sized_decode_agrees():
    """Hundreds of blobs (the prefetch runs ahead of each) and rows of 128 channels."""
    codec = codec_named("int8")
    blobs = [(18, slice(10, 18)) if i % 3 else (9, None) for i in range(200)]
    items, total = encoded(codec, blobs, L=4, H=3, D=128)
    got = torch.empty(4, 2, 3, total, 128)
    assert native.dequantize_into(codec, items, got)
    assert torch.equal(got, codec.decode_many_torch(items, torch.empty(4, 2, 3, total, 128)))


@pytest.mark.parametrize("head_dim", [24, 6])
def test_head_dims_that_are_not_multiples_of_the_vector_width(head_dim):
    codec = codec_named("int4", 0, 0)
    items, total = encoded(codec, [(5, None), (11, slice(2, 9))], D=head_dim)
    got = torch.empty(3, 2, 2, total, head_dim)
    assert native.dequantize_into(codec, items, got)
    assert torch.equal(got, codec.decode_many_torch(items, torch.empty(3, 2, 2, total, head_dim)))


def test_layouts_it_does_not_take_go_to_the_torch_path():
    codec = codec_named("int8")
    items, _ = encoded(codec, [(9, None)])
    parts = items[0][0]
    rows = torch.tensor([0, 2, 5])
    assert not native.dequantize_into(codec, [(parts, rows)], torch.empty(3, 2, 2, 3, 64))
    assert not native.dequantize_into(codec, [(parts, None)], torch.empty(3, 2, 2, 9, 64).half())
    assert not native.dequantize_into(codec, [(parts, None)], torch.empty(3, 2, 2, 8, 64))  # rows
    assert not native.dequantize_into(codec_named("int4"), [(parts, None)], torch.empty(3, 2, 2, 9, 64))  # width
    assert not native.dequantize_into(codec_named("fp8"), [(parts, None)], torch.empty(3, 2, 2, 9, 64))  # dtypes
    # The codec still decodes them, on the torch path.
    got = codec.decode_into(parts, torch.empty(3, 2, 2, 3, 64), rows)
    assert torch.equal(got, codec.decode_into_torch(parts, torch.empty(3, 2, 2, 3, 64), rows))


@pytest.mark.parametrize("value_group", [1, 3])
def test_int4_with_odd_value_groups_goes_to_the_torch_path(value_group):
    """Its groups would split a byte's two nibbles: the kernel refuses them (it wrote past the
    buffer before it did), and the codec still decodes them."""
    codec = codec_named("int4", 0, value_group)
    items, total = encoded(codec, [(5, None), (9, slice(1, 8))], D=48)
    got = torch.full((3, 2, 2, total, 48), float("nan"))
    assert not native.dequantize_into(codec, items, got) and got.isnan().all()
    assert torch.equal(codec.decode_many(items, got), codec.decode_many_torch(items, torch.empty_like(got)))


def test_slices_outside_the_blob_and_overlapping_planes_go_to_the_torch_path():
    codec = codec_named("int8")
    items, _ = encoded(codec, [(9, None)])
    parts = items[0][0]
    for rows in (slice(-3, None), slice(2, 12), slice(None, 4), slice(0, 9, 2)):
        assert not native.dequantize_into(codec, [(parts, rows)], torch.empty(3, 2, 2, 3, 64))
    overlapping = torch.empty(2048).as_strided((3, 2, 2, 9, 64), (4 * 64, 2 * 64, 64, 64, 1))
    assert not native.dequantize_into(codec, [(parts, None)], overlapping)
