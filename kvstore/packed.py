"""Rows of stored KV still in their codec, for the device path (`query/device_pager.py`):
`PackedRows` (codes and statistics of several blobs, laid out so a layer group is a slice),
`packed_specs` (their staging buffers' shapes), `payload_of` (a payload's tensors by name) and
`dequantize_rows`, the device-side dequantization, written out of place for torch.compile and
equal bit for bit to the codec's own `decode_into` (codecs.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .codecs import Codec, Fp8


@dataclass
class PackedRows:
    """Token rows of several blobs of one codec, still in that codec: what the GPU path ships
    over PCIe (`device_pager.py`) and dequantizes on the device. Every tensor but `key_group`
    has the layers first, so a layer group is a slice of each.

    codes [L, 2, H, n, D] uint8 (int4: [.., D/2], two channels a byte); key_scale, key_min
    [L, H, G, D]: the key statistics of every blob's key groups, blob after blob; key_group
    [n] int32: the row of key_scale each token row uses; value_scale, value_min [L, H, n, D/vg].
    key_min and value_min are None for fp8."""

    codec: Codec
    codes: torch.Tensor
    key_scale: torch.Tensor
    key_min: torch.Tensor | None
    value_scale: torch.Tensor
    value_min: torch.Tensor | None
    key_group: torch.Tensor

    def with_layered(self, tensors: list[torch.Tensor], key_group: torch.Tensor) -> PackedRows:
        """The same rows over other tensors (their copies on the device, or a layer slice)."""
        it = iter(tensors)
        pick = [None if t is None else next(it) for t in (self.codes, self.key_scale, self.key_min,
                                                          self.value_scale, self.value_min)]
        return PackedRows(self.codec, *pick, key_group)


def packed_specs(codec: Codec, layers: int, kv_heads: int, rows: int, groups: int, head_dim: int):
    """The (dtype, shape) of PackedRows' layered tensors for `rows` token rows and `groups` key groups."""
    _, vg = codec.groups(max(rows, 1), head_dim)
    codes = codec.parts((layers, 2, kv_heads, 1, head_dim))[0]
    stat = torch.float32 if isinstance(codec, Fp8) else torch.float16
    ks, vs = (layers, kv_heads, groups, head_dim), (layers, kv_heads, rows, head_dim // vg)
    specs = [(torch.uint8, (layers, 2, kv_heads, rows, codes[1][-1])), (stat, ks)]
    specs += [] if isinstance(codec, Fp8) else [(stat, ks)]
    specs += [(stat, vs)] + ([] if isinstance(codec, Fp8) else [(stat, vs)])
    return specs


def payload_of(codec: Codec, parts: list[torch.Tensor]) -> tuple:
    """A scaled codec's payload tensors (stored, or packed_specs' tensors) by name: (codes,
    key_scale, key_min, value_scale, value_min); fp8 has no minima (None)."""
    if isinstance(codec, Fp8):
        return parts[0], parts[1], None, parts[2], None
    return tuple(parts)


def dequantize_rows(codes, key_scale, key_min, value_scale, value_min, key_group, idx: torch.Tensor,
                    dtype: torch.dtype, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [L, H, n', D] in `dtype` of packed rows `idx` ([n'] int64), given the
    fields of a PackedRows and its codec's name (`kind`): the same arithmetic, in the same
    order and roundings, as that codec's `decode_into` (so it equals it bit for bit), written
    out of place over plain tensors for torch.compile to fuse on the device."""
    q = codes.index_select(3, idx)
    if kind == "fp8":
        x = q.view(torch.float8_e4m3fn).to(dtype)
    elif kind == "int4":                                    # low nibble: even channels
        x = torch.stack((q & 15, q >> 4), dim=-1).flatten(-2).to(dtype)
    else:
        x = q.to(dtype)
    groups = key_group.index_select(0, idx)
    ks = key_scale.index_select(2, groups)
    if key_min is None:
        k = (x[:, 0] * ks).to(dtype)
    else:                                                   # one rounding, as decode_into's addcmul
        k = torch.addcmul(key_min.index_select(2, groups), x[:, 0], ks).to(dtype)
    L, H, n, D = k.shape
    vs = value_scale.index_select(2, idx).unsqueeze(-1)
    vg = D // vs.shape[3]
    v = (x[:, 1].reshape(L, H, n, D // vg, vg) * vs).to(dtype)
    if key_min is not None:
        v = (v + value_min.index_select(2, idx).unsqueeze(-1)).to(dtype)
    return k, v.reshape(L, H, n, D)
