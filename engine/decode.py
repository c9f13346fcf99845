"""Cache assembly and decoding.

Assembly: prompt prefix + chunk KVs in temporal order (whatever level each was loaded at),
keys rotated to contiguous positions from 0 (`backend.part_positions`: one position per
token for 1-D RoPE, each chunk's extent for M-RoPE); the question continues at the next
free position N.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


def generate(backend: HFCausalBackend, cache: AssembledCache, suffix: str,
             gen: GenerationConfig = GenerationConfig()) -> Iterator[str]:
    """Stream the answer's text pieces. suffix: the text after the video (question + the
    chat template's assistant opening). Stops at EOS, a stop string, or max_new_tokens."""
    ids = backend.tokenize(suffix)
    pos = cache.next_pos
    out = backend.forward(backend.embed_text(ids), backend.make_cache(cache.keys, cache.values),
                          positions=torch.arange(pos, pos + len(ids)), kv=False, logits="last")
    pos += len(ids)
    rng = torch.Generator().manual_seed(gen.seed) if gen.seed is not None else None
    eos = backend.eos_token_ids
    produced: list[int] = []
    text_so_far = ""
    for _ in range(gen.max_new_tokens):
        tok = _pick(out.logits[-1], gen, rng)
        if tok in eos:
            return
        produced.append(tok)
        text = backend.tokenizer.decode(produced, skip_special_tokens=True)
        piece, text_so_far = text[len(text_so_far):], text
        hit = next((s for s in gen.stop if s in text), None)
        if hit is not None:
            keep = text[: text.index(hit)]
            already = len(text) - len(piece)
            if len(keep) > already:
                yield keep[already:]
            return
        if piece:
            yield piece
        out = backend.forward(backend.embed_text(torch.tensor([tok])), out.cache,
                              positions=torch.tensor([pos]), kv=False)
        pos += 1


def _pick(logits: torch.Tensor, gen: GenerationConfig, rng) -> int:
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
