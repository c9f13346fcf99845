"""KV storage codecs: how a blob's K,V bytes are stored, and how they come back.

Each codec is a small dataclass with `encode` (kv -> its payload tensors) and `decode_into`
(payload -> the model's dtype, for some token rows, straight into the caller's buffer); the
blob format (blob.py) lays the payload out and checksums it. The tensor `kv` is always
[layers, 2, kv_heads, tokens, head_dim]: kv[:, 0] the keys (stored before RoPE), kv[:, 1]
the values.

    none   the model's dtype as it is (blob format 1; zero-copy reads)
    bf16   bfloat16                     |err| <= 2^-8  |x|
    fp16   float16                      |err| <= 2^-11 |x| (and |x| below 65504)
    fp8    float8 e4m3, scaled          |err| <= 2^-4 |x| + s 2^-10; s = amax/448 per key
                                        channel (over the blob's tokens) and per value token
    int8   asymmetric uint8             |err| <= s/2 (+ float16 rounding of s, min and x)
    int4   asymmetric 4-bit, packed     |err| <= s/2 (same), s = (max-min)/qmax

int8/int4 follow KIVI's grouping: keys per channel (min and scale over the blob's tokens, or
groups of `key_group` tokens), values per token (over the head's channels, or groups of
`value_group`). Keys are stored before RoPE, where their per-channel outliers sit in fixed
channels (KVQuant), so a per-channel scale absorbs them. Scales and minima are float16.
fp8, int8 and int4 decode in one pass through a small C kernel where scripts/setup.sh built
it (native.py); `decode_into_torch`/`decode_many_torch` are the same arithmetic in torch, the
reference its tests compare against and the path taken where it is not built.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import torch

from . import native


def _groups(n: int, group: int) -> int:
    return -(-n // group)


Rows = torch.Tensor | slice | None
"""Token rows of a blob: int64 [n] indices, a slice (one ascending run: taken as a view, not
gathered; an H part's rows usually are one, its timestamp rows leading), or None: all."""


def take_rows(t: torch.Tensor, dim: int, rows: Rows) -> torch.Tensor:
    """t's `rows` along `dim` (None: t; a slice: a view; indices: a gathered copy)."""
    if rows is None:
        return t
    if isinstance(rows, slice):
        return t.narrow(dim, rows.start, rows.stop - rows.start)
    return t.index_select(dim, rows)


def row_count(rows: Rows, tokens: int) -> int:
    """How many rows `rows` takes of a blob of `tokens`."""
    if rows is None:
        return tokens
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)


@dataclass(frozen=True)
class Codec:
    """A storage codec. parts(): the payload tensors' (dtype, shape) for a blob of
    [layers, 2, kv_heads, tokens, head_dim], in storage order."""

    name: ClassVar[str] = ""
    code: ClassVar[int] = 0
    key_group: int = 0          # tokens per key scale group (0: all of the blob's tokens)
    value_group: int = 0        # channels per value scale group (0: the whole head)

    def parts(self, shape: tuple[int, ...]) -> list[tuple[torch.dtype, tuple[int, ...]]]:
        raise NotImplementedError

    def encode(self, kv: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def decode_into(self, parts: list[torch.Tensor], out: torch.Tensor, rows: Rows = None) -> torch.Tensor:
        """Dequantize token `rows` (T' of them) into out [layers, 2, kv_heads, T', head_dim]."""
        raise NotImplementedError

    def decode_many(self, items: list[tuple[list[torch.Tensor], Rows]], out: torch.Tensor) -> torch.Tensor:
        """Blobs one after another along out's token axis: items [(parts, rows)], out
        [layers, 2, kv_heads, sum of their rows, head_dim] (a hot set). Equal to decode_into
        blob by blob (a codec may batch the arithmetic)."""
        return self._blob_by_blob(items, out, self.decode_into)

    @staticmethod
    def _blob_by_blob(items, out: torch.Tensor, decode_into) -> torch.Tensor:
        off = 0
        for parts, rows in items:
            n = row_count(rows, parts[0].shape[3])
            decode_into(parts, out.narrow(3, off, n), rows)
            off += n
        return out

    def bound(self, parts: list[torch.Tensor], kv: torch.Tensor) -> torch.Tensor:
        """The documented largest |decoded - kv| per element, [layers, 2, kv_heads, tokens, head_dim]
        (kv: what was encoded, float32)."""
        raise NotImplementedError

    def groups(self, tokens: int, head_dim: int) -> tuple[int, int]:
        """(tokens per key group, channels per value group) for a blob of this size."""
        kg = self.key_group if 0 < self.key_group < tokens else max(tokens, 1)
        vg = self.value_group if 0 < self.value_group < head_dim and head_dim % self.value_group == 0 else head_dim
        return kg, vg

    @property
    def label(self) -> str:
        """The name with its groups, as the fingerprint records it."""
        g = f"/k{self.key_group}v{self.value_group}" if (self.key_group or self.value_group) else ""
        return self.name + g


@dataclass(frozen=True)
class Cast(Codec):
    """A narrower float type, cast on the way in and back."""

    store_dtype: torch.dtype = torch.bfloat16

    def parts(self, shape):
        return [(self.store_dtype, tuple(shape))]

    def encode(self, kv):
        return [kv.to(self.store_dtype).contiguous()]

    def decode_into(self, parts, out, rows=None):
        return out.copy_(take_rows(parts[0], 3, rows))

    def bound(self, parts, kv):
        rel = 2.0 ** -8 if self.store_dtype == torch.bfloat16 else 2.0 ** -11
        return kv.abs() * rel + 2.0 ** -24


@dataclass(frozen=True)
class Bf16(Cast):
    name: ClassVar[str] = "bf16"
    code: ClassVar[int] = 1
    store_dtype: torch.dtype = torch.bfloat16


@dataclass(frozen=True)
class Fp16(Cast):
    name: ClassVar[str] = "fp16"
    code: ClassVar[int] = 2
    store_dtype: torch.dtype = torch.float16


class _Scaled(Codec):
    """The mechanics of the scaled codecs: key statistics per channel over token groups
    ([L, H, n_groups, D]), value statistics per token over channel groups ([L, H, T, D/vg]),
    and the per-row gather of both at decode time. Decoding goes through the one-pass C
    kernel (native.py) and falls back to `decode_into_torch`, the same arithmetic in torch:
    a code copy, then the scaling in place (the reference the kernel equals bit for bit)."""

    def decode_into(self, parts, out, rows=None):
        if native.dequantize_into(self, [(parts, rows)], out):
            return out
        return self.decode_into_torch(parts, out, rows)

    def decode_many(self, items, out):
        if native.dequantize_into(self, items, out):
            return out
        return self.decode_many_torch(items, out)

    def decode_into_torch(self, parts: list[torch.Tensor], out: torch.Tensor, rows: Rows = None) -> torch.Tensor:
        raise NotImplementedError

    def decode_many_torch(self, items, out: torch.Tensor) -> torch.Tensor:
        return self._blob_by_blob(items, out, self.decode_into_torch)

    def _key_stats(self, k: torch.Tensor, kg: int, reduce) -> torch.Tensor:
        """k [L, H, T, D] -> reduce over each group of kg tokens: [L, H, ceil(T/kg), D]."""
        L, H, T, D = k.shape
        n = _groups(T, kg)
        if n * kg != T:                     # the last group is short: pad with its own last row
            k = torch.cat([k, k[:, :, -1:].expand(L, H, n * kg - T, D)], dim=2)
        return reduce(k.reshape(L, H, n, kg, D), dim=3)

    def _value_stats(self, v: torch.Tensor, vg: int, reduce) -> torch.Tensor:
        """v [L, H, T, D] -> reduce over each group of vg channels: [L, H, T, D/vg]."""
        L, H, T, D = v.shape
        return reduce(v.reshape(L, H, T, D // vg, vg), dim=4)

    def _per_element(self, key_stat, value_stat, shape) -> torch.Tensor:
        """Key and value statistics spread to every element: [L, 2, H, T, D]."""
        L, _, H, T, D = shape
        kg, vg = self.groups(T, D)
        ks, vs = self._per_row(key_stat.float(), value_stat.float(), None, T, kg)
        return torch.stack((ks.expand(L, H, T, D), vs.repeat_interleave(vg, dim=3)), dim=1)

    @staticmethod
    def _per_row(key_stat, value_stat, rows, T, kg):
        """The statistics of token `rows` (None: all T): keys [L, H, T', D] (or [L, H, 1, D]
        when the blob is one key group: broadcast, never gathered), values [L, H, T', D/vg]."""
        if key_stat.shape[2] > 1:
            at = torch.arange(T) if rows is None else torch.arange(T)[rows]
            key_stat = key_stat.index_select(2, torch.div(at, kg, rounding_mode="floor"))
        return key_stat, take_rows(value_stat, 2, rows)


@dataclass(frozen=True)
class IntQ(_Scaled):
    """Asymmetric integer codes q in [0, 2^bits - 1]: x ~ q * scale + min."""

    bits: ClassVar[int] = 8

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    def parts(self, shape):
        L, _, H, T, D = shape
        kg, vg = self.groups(T, D)
        codes = (L, 2, H, T, D if self.bits == 8 else D // 2)
        ks = (L, H, _groups(T, kg), D)
        vs = (L, H, T, D // vg)
        return [(torch.uint8, codes), (torch.float16, ks), (torch.float16, ks), (torch.float16, vs),
                (torch.float16, vs)]

    def encode(self, kv):
        L, _, H, T, D = kv.shape
        if self.bits == 4 and D % 2:
            raise ValueError(f"int4 packs two channels a byte: head_dim {D} must be even")
        kg, vg = self.groups(T, D)
        x = kv.float()
        k, v = x[:, 0], x[:, 1]
        kmin = self._key_stats(k, kg, torch.amin).half()
        kscale = self._scale(self._key_stats(k, kg, torch.amax).half(), kmin)
        vmin = self._value_stats(v, vg, torch.amin).half()
        vscale = self._scale(self._value_stats(v, vg, torch.amax).half(), vmin)
        # Quantize with the float16-rounded statistics the decoder will use.
        ks, vs = self._per_row(kscale.float(), vscale.float(), None, T, kg)
        km, vm = self._per_row(kmin.float(), vmin.float(), None, T, kg)
        vs, vm = vs.repeat_interleave(vg, dim=3), vm.repeat_interleave(vg, dim=3)
        q = torch.empty(L, 2, H, T, D, dtype=torch.uint8)
        q[:, 0] = ((k - km) / ks).round_().clamp_(0, self.qmax)
        q[:, 1] = ((v - vm) / vs).round_().clamp_(0, self.qmax)
        if self.bits == 4:
            q = (q[..., 0::2] | (q[..., 1::2] << 4)).contiguous()
        return [q, kscale, kmin, vscale, vmin]

    def bound(self, parts, kv):
        # Half a step, and the float16 rounding of the stored minimum and of the step count.
        _, kscale, kmin, vscale, vmin = parts
        s = self._per_element(kscale, vscale, kv.shape)
        mn = self._per_element(kmin, vmin, kv.shape)
        return s * 0.5 + (mn.abs() + kv.abs()) * 2.0 ** -10 + 1e-6

    def _scale(self, mx: torch.Tensor, mn: torch.Tensor) -> torch.Tensor:
        """float16 scales, never 0 (a constant group decodes to its min exactly)."""
        return ((mx.float() - mn.float()) / self.qmax).half().clamp_(min=2 ** -24)

    def _codes_into(self, q: torch.Tensor, out: torch.Tensor) -> None:
        """Codes [L, 2, H, n, D (int4: D/2)] -> out's dtype, in place."""
        if self.bits == 4:                  # low nibble: even channels, high nibble: odd
            out[..., 0::2].copy_(q & 15)
            out[..., 1::2].copy_(q >> 4)
        else:
            out.copy_(q)

    def decode_into_torch(self, parts, out, rows=None):
        q, kscale, kmin, vscale, vmin = parts
        L, _, H, T = q.shape[:4]
        D = out.shape[-1]
        kg, vg = self.groups(T, D)
        self._codes_into(take_rows(q, 3, rows), out)
        ks, vs = self._per_row(kscale, vscale, rows, T, kg)
        km, vm = self._per_row(kmin, vmin, rows, T, kg)
        k, v = out[:, 0], out[:, 1]
        torch.addcmul(km, k, ks, out=k)
        Tn = v.shape[2]
        v5 = v.view(L, H, Tn, D // vg, vg)
        v5.mul_(vs.unsqueeze(-1)).add_(vm.unsqueeze(-1))
        return out

    def decode_many_torch(self, items, out):
        """decode_into_torch's arithmetic with each scaling done once: values over all the rows,
        keys over each run of equal-length blobs (their per-channel statistics stacked), so
        a hot set of ~65 small blobs costs one code copy per blob, not five passes."""
        if any(parts[1].shape[2] > 1 for parts, _ in items):
            return self._blob_by_blob(items, out, self.decode_into_torch)      # several key groups a blob
        L, _, H, _, D = out.shape
        lengths, kstats, vstats, off = [], [], [], 0
        for (q, kscale, kmin, vscale, vmin), rows in items:
            q = take_rows(q, 3, rows)
            n = q.shape[3]
            if not n:
                continue
            self._codes_into(q, out.narrow(3, off, n))
            lengths.append(n)
            kstats.append((kscale, kmin))
            vstats.append((take_rows(vscale, 2, rows), take_rows(vmin, 2, rows)))
            off += n
        if not lengths:
            return out
        # float32 statistics (exact: they are float16): the same products and sums as
        # decode_into's, without a mixed-dtype kernel.
        vs, vm = (torch.cat(x, dim=2).float() for x in zip(*vstats))        # [L, H, rows, D/vg]
        v = out[:, 1].narrow(2, 0, off)
        vg = D // vs.shape[3]
        v.view(L, H, off, D // vg, vg).mul_(vs.unsqueeze(-1)).add_(vm.unsqueeze(-1))
        ks, km = (torch.cat(x, dim=2).float() for x in zip(*kstats))        # [L, H, blobs, D]
        k, i, at = out[:, 0], 0, 0
        for n, same in itertools.groupby(lengths):        # runs of blobs with n rows each
            c = len(list(same))
            run = k.narrow(2, at, n * c).view(L, H, c, n, D)
            torch.addcmul(km[:, :, i:i + c].unsqueeze(3), run, ks[:, :, i:i + c].unsqueeze(3), out=run)
            i, at = i + c, at + n * c
        return out


@dataclass(frozen=True)
class Int8(IntQ):
    name: ClassVar[str] = "int8"
    code: ClassVar[int] = 4
    bits: ClassVar[int] = 8


@dataclass(frozen=True)
class Int4(IntQ):
    name: ClassVar[str] = "int4"
    code: ClassVar[int] = 5
    bits: ClassVar[int] = 4


@dataclass(frozen=True)
class Fp8(_Scaled):
    """float8 e4m3 (max 448) of x / scale; scale = amax / 448 per key channel and per value token."""

    name: ClassVar[str] = "fp8"
    code: ClassVar[int] = 3
    E4M3_MAX: ClassVar[float] = 448.0

    def parts(self, shape):
        L, _, H, T, D = shape
        kg, vg = self.groups(T, D)
        return [(torch.uint8, tuple(shape)), (torch.float32, (L, H, _groups(T, kg), D)),
                (torch.float32, (L, H, T, D // vg))]

    def encode(self, kv):
        L, _, H, T, D = kv.shape
        kg, vg = self.groups(T, D)
        x = kv.float()
        k, v = x[:, 0], x[:, 1]
        kscale = (self._key_stats(k.abs(), kg, torch.amax) / self.E4M3_MAX).clamp_(min=1e-12)
        vscale = (self._value_stats(v.abs(), vg, torch.amax) / self.E4M3_MAX).clamp_(min=1e-12)
        ks, vs = self._per_row(kscale, vscale, None, T, kg)
        q = torch.empty(L, 2, H, T, D, dtype=torch.float8_e4m3fn)
        lim = self.E4M3_MAX
        q[:, 0] = (k / ks).clamp_(-lim, lim)
        q[:, 1] = (v.view(L, H, T, D // vg, vg) / vs.unsqueeze(-1)).clamp_(-lim, lim).view(L, H, T, D)
        return [q.view(torch.uint8), kscale, vscale]

    def bound(self, parts, kv):
        # e4m3 keeps 3 mantissa bits (half an ulp: 2^-4 relative); below 2^-6 it is subnormal,
        # in steps of 2^-9 (half: 2^-10 of the scale).
        s = self._per_element(parts[1], parts[2], kv.shape)
        return kv.abs() * 2.0 ** -4 + s * 2.0 ** -10 + 1e-7

    def decode_into_torch(self, parts, out, rows=None):
        q, kscale, vscale = parts
        L, _, H, T, D = q.shape
        kg, vg = self.groups(T, D)
        q = take_rows(q, 3, rows)
        ks, vs = self._per_row(kscale, vscale, rows, T, kg)
        out.copy_(q.view(torch.float8_e4m3fn))
        out[:, 0].mul_(ks)
        Tn = out.shape[3]
        out[:, 1].view(L, H, Tn, D // vg, vg).mul_(vs.unsqueeze(-1))
        return out


CODECS: dict[str, type[Codec]] = {c.name: c for c in (Bf16, Fp16, Fp8, Int8, Int4)}
BY_CODE: dict[int, type[Codec]] = {c.code: c for c in CODECS.values()}
NAMES = ("none", *CODECS)


def codec_named(name: str, key_group: int = 0, value_group: int = 0) -> Codec | None:
    """The codec called `name` ("none": None, the model's dtype as it is)."""
    if name == "none":
        return None
    if name not in CODECS:
        raise ValueError(f"unknown KV codec {name!r}; choose one of {', '.join(NAMES)}")
    return CODECS[name](key_group=key_group, value_group=value_group)
