"""Cache assembly and decoding.

Assembly: prompt prefix + chunk KVs in temporal order (whatever level each was loaded at),
keys rotated to contiguous positions from 0 (`backend.part_positions`: one position per
token for 1-D RoPE, each chunk's extent for M-RoPE); the question continues at the next
free position N.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .backend import HFCausalBackend
from .chunkkv import ChunkKV
from .prefill import concat_kv


@dataclass
class AssembledCache:
    """keys (rotated), values: [layers, kv_heads, N, head_dim]; spans: (chunk index, start, end)
    token ranges of each part, for evidence and attention bookkeeping. next_position: where
    the text after the video starts (None: N, one position per token)."""

    keys: torch.Tensor
    values: torch.Tensor
    spans: list[tuple[int, int, int]] = field(default_factory=list)
    next_position: int | None = None

    @property
    def tokens(self) -> int:
        return self.keys.shape[2]

    @property
    def next_pos(self) -> int:
        return self.tokens if self.next_position is None else self.next_position


def assemble(backend: HFCausalBackend, parts: Sequence[ChunkKV]) -> AssembledCache:
    """parts: prefix first, then chunks in temporal order (pre-RoPE, any level)."""
    order = [p.index for p in parts[1:]]
    if order != sorted(order):
        raise ValueError(f"chunks must be in temporal order, got {order}")
    k_pre, v = concat_kv(parts)
    pos, next_pos = backend.part_positions(parts)
    keys = backend.rotary.rotate(k_pre.to(backend.device, backend.dtype), pos)
    spans, start = [], 0
    for p in parts:
        spans.append((p.index, start, start + p.tokens))
        start += p.tokens
    return AssembledCache(keys, v.to(backend.device, backend.dtype), spans, next_pos)


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0          # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


class TextOut:
    """An answer's text as its tokens arrive: `feed(token)` -> (the new text piece, whether a
    stop string ended it; the piece then stops before the stop string)."""

    def __init__(self, backend: HFCausalBackend, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = backend.tokenizer, stop
        self.produced: list[int] = []
        self.text = ""

    def feed(self, tok: int) -> tuple[str, bool]:
        self.produced.append(tok)
        text = self.tokenizer.decode(self.produced, skip_special_tokens=True)
        piece, already = text[len(self.text):], len(self.text)
        self.text = text
        hit = next((s for s in self.stop if s in text), None)
        if hit is not None:
            keep = text[: text.index(hit)]
            return (keep[already:] if len(keep) > already else ""), True
        return piece, False


def pick(logits: torch.Tensor, gen: GenerationConfig, rng) -> int:
    """The next token from logits [vocab]: argmax (temperature 0), else sampled (top-p)."""
    if gen.temperature <= 0:
        return int(logits.argmax())
    probs = (logits.float() / gen.temperature).softmax(-1)
    if gen.top_p < 1.0:
        sp, si = probs.sort(descending=True)
        cut = sp.cumsum(-1) - sp > gen.top_p
        sp[cut] = 0
        probs = torch.zeros_like(probs).scatter(0, si, sp)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=rng))


def question_logits(backend: HFCausalBackend, cache: AssembledCache, suffix: str) -> torch.Tensor:
    """Logits [T, vocab] of the suffix tokens on top of the cache (for exactness checks)."""
    ids = backend.tokenize(suffix)
    pos = torch.arange(cache.next_pos, cache.next_pos + len(ids))
    return backend.forward(backend.embed_text(ids), backend.make_cache(cache.keys, cache.values),
                           positions=pos, kv=False).logits
