"""KV compression policies (kvpress style): one small dataclass per method, mechanics in a base.

A policy reduces a chunk's VISUAL tokens to exactly ceil(n_visual / ratio) tokens and keeps
every TEXT token (timestamps) dense. All work is on pre-RoPE keys, so merged or dropped
tokens need no position bookkeeping: whatever is loaded is re-rotated contiguously.
Output order: text tokens, then the kept visual tokens in temporal order (a chunk is laid
out that way: "Time t:" text first, then its frames' visual tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from .backend import HFCausalBackend
from .chunkkv import ChunkKV, TokenKind
from .config import CompressionConfig


@dataclass
class Policy:
    """Base: split text/visual, reduce visual via `_reduce`, reassemble."""

    ratio: int = 2
    needs_attention: ClassVar[bool] = False

    def keep_count(self, n_visual: int) -> int:
        return math.ceil(n_visual / self.ratio) if n_visual else 0

    def compress(self, chunk: ChunkKV, level: str, attention: torch.Tensor | None = None) -> ChunkKV:
        """chunk: a full ChunkKV; attention: [layers, kv_heads, tokens] received per token, or None."""
        text = chunk.text_mask
        vis = ~text
        kv, vv = chunk.keys[:, :, vis], chunk.values[:, :, vis]
        att = attention[:, :, vis] if attention is not None else None
        if self.needs_attention and att is None:
            raise ValueError(f"{type(self).__name__} needs the attention each token received")
        rk, rv = self._reduce(kv, vv, att)
        n_text = int(text.sum())
        keys = torch.cat([chunk.keys[:, :, text], rk], dim=2)
        values = torch.cat([chunk.values[:, :, text], rv], dim=2)
        kinds = torch.cat([torch.full((n_text,), TokenKind.TEXT, dtype=torch.uint8),
                           torch.full((rk.shape[2],), TokenKind.VISUAL, dtype=torch.uint8)])
        return chunk.with_kv(keys, values, kinds, level)

    def _reduce(self, keys, values, attention):
        """keys, values: [L, H, Tv, D] -> [L, H, keep_count(Tv), D]."""
        raise NotImplementedError


@dataclass
class ScorePolicy(Policy):
    """Keep the top `keep_count` tokens by `score`, per layer and head, in temporal order."""

    def score(self, keys: torch.Tensor, values: torch.Tensor, attention: torch.Tensor | None) -> torch.Tensor:
        """keys, values: [L, H, Tv, D]; attention: [L, H, Tv] or None -> scores [L, H, Tv]."""
        raise NotImplementedError

    def _reduce(self, keys, values, attention):
        n = self.keep_count(keys.shape[2])
        if n == keys.shape[2]:
            return keys, values
        idx = self.score(keys, values, attention).topk(n, dim=-1).indices.sort(dim=-1).values
        idx = idx[..., None].expand(-1, -1, -1, keys.shape[-1])
        return keys.gather(2, idx), values.gather(2, idx)


@dataclass
class Identity(Policy):
    """No compression (ratio 1): used for exactness checks and the full level."""

    ratio: int = 1

    def _reduce(self, keys, values, attention):
        return keys, values


@dataclass
class AvgPool(Policy):
    """Average consecutive groups of `ratio` visual tokens (Video-XL-2's H-KV: avg_pool1d of
    pre-RoPE KVs). The last group may be shorter."""

    def _reduce(self, keys, values, attention):
        T = keys.shape[2]
        n = self.keep_count(T)
        pad = n * self.ratio - T
        def pool(x):
            x32 = x.float()
            if pad:
                x32 = torch.cat([x32, x32.new_zeros(*x.shape[:2], pad, x.shape[3])], dim=2)
            sums = x32.view(*x.shape[:2], n, self.ratio, x.shape[3]).sum(3)
            counts = torch.full((n,), float(self.ratio), device=x.device)
            counts[-1] = self.ratio - pad
            return (sums / counts[:, None]).to(x.dtype)
        return pool(keys), pool(values)


@dataclass
class KeyNorm(ScorePolicy):
    """Keep the lowest-norm keys (low-norm keys draw the most attention; kvpress's KnormPress)."""

    def score(self, keys, values, attention):
        return -keys.float().norm(dim=-1)


@dataclass
class AttentionScore(ScorePolicy):
    """Keep the tokens that received the most attention from within their own chunk."""

    needs_attention: ClassVar[bool] = True

    def score(self, keys, values, attention):
        return attention


@dataclass
class Stride(ScorePolicy):
    """Keep every `ratio`-th visual token (0, r, 2r, ...): exactly ceil(Tv / r) tokens score 0."""

    def score(self, keys, values, attention):
        pos = torch.arange(keys.shape[2], device=keys.device)
        return -(pos % self.ratio).float().expand(*keys.shape[:2], -1)


def gist(parts: Sequence[ChunkKV], ratio: int) -> ChunkKV:
    """The gist of consecutive chunks: the visual rows of their H-KVs (timestamps and text
    left out), in temporal order, averaged in runs of `ratio` (as AvgPool): one part of
    ceil(rows / ratio) visual tokens that keeps a coarse memory of every moment of the group.
    parts: the group's chunks at H, in order -> ChunkKV level "G" [L, Hkv, tokens, D]."""
    vis = [p.kinds != TokenKind.TEXT for p in parts]
    keys = torch.cat([p.keys[:, :, v] for p, v in zip(parts, vis)], dim=2)
    values = torch.cat([p.values[:, :, v] for p, v in zip(parts, vis)], dim=2)
    k, v = AvgPool(ratio=ratio)._reduce(keys, values, None)
    first, last = parts[0], parts[-1]
    return ChunkKV(k, v, torch.full((k.shape[2],), TokenKind.VISUAL, dtype=torch.uint8), index=first.index,
                   frame_start=first.frame_start, frame_end=last.frame_end, t_start=first.t_start, t_end=last.t_end,
                   level="G", fingerprint=first.fingerprint)


def attention_received(backend: HFCausalBackend, queries: torch.Tensor, keys_pre: torch.Tensor,
                       local: torch.Tensor | None = None) -> torch.Tensor:
    """Attention each chunk token receives from the chunk's own tokens (causal), summed over
    queries and over the query heads sharing a KV head.

    queries: [L, Hq, T, D] pre-RoPE; keys_pre: [L, Hkv, T, D] as stored -> [L, Hkv, T].
    local: the chunk's in-chunk positions ([T] or [3, T]; default 0..T-1). Both are rotated
    to the chunk's own frame (base 0): only relative positions matter here."""
    L, Hq, T, D = queries.shape
    Hkv = keys_pre.shape[1]
    local = torch.arange(T) if local is None else local
    k_pos = backend.store_positions(local, 0)   # stored keys still lack this much rotation
    out = torch.empty(L, Hkv, T, device=queries.device)
    causal = torch.ones(T, T, dtype=torch.bool, device=queries.device).tril()
    for layer in range(L):  # one layer at a time keeps the [Hq, T, T] scores small
        q = backend.rotary.rotate(queries[layer].float(), local)
        k = backend.rotary.rotate(keys_pre[layer].float(), k_pos).repeat_interleave(Hq // Hkv, dim=0)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        p = s.masked_fill(~causal, float("-inf")).softmax(-1)          # [Hq, T(query), T(key)]
        out[layer] = p.sum(1).view(Hkv, Hq // Hkv, T).sum(1)
    return out


POLICIES: dict[str, type[Policy]] = {
    "identity": Identity, "avgpool": AvgPool, "knorm": KeyNorm, "attention": AttentionScore, "stride": Stride,
}


def make_policy(cfg: CompressionConfig) -> Policy:
    if cfg.policy not in POLICIES:
        raise ValueError(f"unknown compression policy {cfg.policy!r}; known: {sorted(POLICIES)}")
    if cfg.policy == "identity":
        return Identity()
    return POLICIES[cfg.policy](ratio=cfg.ratio)
