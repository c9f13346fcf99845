"""Decoding several answers at once: one decode step runs the questions in flight as a batch.

Each question keeps its own cache — different videos, different context lengths — in a
buffer sized for its answer (`SeqCache`, written in place, gpt-fast style: no per-step
concatenation). A step embeds every sequence's last token, then per decoder layer runs the
batch's norms, q/k/v/o projections and MLP as one matmul each (the weights read once for
all), and attention per sequence over its own cache (each has its own length: no padding,
no masks). Questions join between steps, after their own question prefill (`start`), and
leave when done: continuous batching. One question alone is the same code with a batch of
one (`generate`), so an answer does not depend on what else was in flight.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .backend import HFCausalBackend
from .decode import AssembledCache, GenerationConfig, TextOut, pick
from .rope import rotate_half


class SeqCache:
    """One sequence's rotated K,V in buffers [layers, kv_heads, capacity, head_dim], appended
    to in place (no per-step concatenation)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        """keys, values: [layers, kv_heads, L, head_dim] (an assembled cache, rotated)."""
        layers, kvh, L, D = keys.shape
        self.k = torch.empty(layers, kvh, max(capacity, L), D, dtype=keys.dtype, device=keys.device)
        self.v = torch.empty_like(self.k)
        self.k[:, :, :L] = keys
        self.v[:, :, :L] = values
        self.length = L                    # tokens filled in every layer

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add T tokens' keys, values [kv_heads, T, head_dim] at `layer` (after `length`); the
        layer's filled K, V [kv_heads, length + T, head_dim]."""
        end = self.length + keys.shape[1]
        if end > self.k.shape[2]:
            raise RuntimeError(f"sequence cache full ({self.k.shape[2]} positions)")
        self.k[layer, :, self.length:end] = keys
        self.v[layer, :, self.length:end] = values
        return self.k[layer, :, :end], self.v[layer, :, :end]


@dataclass
class Sequence:
    """A question being answered: its cache, next position, generation settings, the text
    produced so far (`out`) and the token to feed next."""

    cache: SeqCache
    position: int
    gen: GenerationConfig
    out: TextOut
    next_token: int | None = None
    steps: int = 0
    done: bool = False
    rng: torch.Generator | None = None
    tag: object = None
    pieces: list[str] = field(default_factory=list)
    finish_reason: str = ""          # once done: "stop" (EOS or a stop string) or "length"


def generate(backend: HFCausalBackend, cache: AssembledCache, suffix: str,
             gen: GenerationConfig = GenerationConfig()) -> Iterator[str]:
    """Stream the answer's text pieces. suffix: the text after the video (question + the
    chat template's assistant opening). Stops at EOS, a stop string, or max_new_tokens.
    A batch of one through this module's decoder: an answer is the same alone or batched."""
    yield from pieces(backend, start(backend, cache, suffix, gen))


def pieces(backend: HFCausalBackend, seq: Sequence) -> Iterator[str]:
    """Decode a started sequence alone to its end, streaming its text pieces (the sequence
    keeps its counts: steps, finish_reason)."""
    while True:
        yield from seq.pieces
        seq.pieces.clear()
        if seq.done:
            return
        step(backend, [seq])


@torch.no_grad()
def start(backend: HFCausalBackend, cache: AssembledCache, suffix: str, gen: GenerationConfig,
          tag: object = None) -> Sequence:
    """A Sequence for a question on its assembled cache, with its first token (`start_many`)."""
    return start_many(backend, [(cache, suffix, gen, tag)])[0]


@torch.no_grad()
def start_many(backend: HFCausalBackend, questions: list[tuple]) -> list[Sequence]:
    """Sequences for questions (cache, suffix, gen, tag): each question's text after the video
    is prefilled on top of its own cache (all of them in one forward) and its first token
    picked."""
    seqs, ids = [], []
    for cache, suffix, gen, tag in questions:
        tok = backend.tokenize(suffix)
        ids.append(tok)
        rng = torch.Generator().manual_seed(gen.seed) if gen.seed is not None else None
        seqs.append(Sequence(SeqCache(cache.keys, cache.values, cache.tokens + len(tok) + gen.max_new_tokens + 1),
                             cache.next_pos, gen, TextOut(backend, gen.stop), rng=rng, tag=tag))
    logits = _forward(backend, seqs, ids)
    for b, s in enumerate(seqs):
        _take(backend, s, logits[b])
    return seqs


def _take(backend: HFCausalBackend, seq: Sequence, logits: torch.Tensor) -> None:
    """Pick the next token from logits [vocab]; record its text or finish the sequence."""
    if seq.steps >= seq.gen.max_new_tokens:
        seq.done, seq.finish_reason = True, "length"
        return
    tok = pick(logits, seq.gen, seq.rng)
    seq.steps += 1
    if tok in backend.eos_token_ids:
        seq.done, seq.finish_reason = True, "stop"
        return
    piece, stop = seq.out.feed(tok)
    if piece:
        seq.pieces.append(piece)
    seq.done = stop or seq.steps >= seq.gen.max_new_tokens
    if seq.done:
        seq.finish_reason = "stop" if stop else "length"
    seq.next_token = None if seq.done else tok


@torch.no_grad()
def step(backend: HFCausalBackend, seqs: list[Sequence]) -> None:
    """One decode step for every sequence in `seqs` (none done): feeds each its next token,
    appends to its cache and picks the one after (`Sequence.pieces` gets the new text)."""
    if not seqs:
        return
    logits = _forward(backend, seqs, [torch.tensor([s.next_token]) for s in seqs])
    for b, s in enumerate(seqs):
        _take(backend, s, logits[b])


def _forward(backend: HFCausalBackend, seqs: list[Sequence], ids: list[torch.Tensor]) -> torch.Tensor:
    """Run ids[b] ([T_b] token ids) on top of seqs[b]'s cache at its position, for all b at
    once; append their K,V; advance positions. Returns the last token's logits [B, vocab].

    Per layer: norms, q/k/v/o projections and the MLP on all sum(T_b) rows as one matmul
    each; attention per sequence over its own cache, causal within its new tokens."""
    dec = backend.decoder
    nq, nkv, D = backend.num_q_heads, backend.num_kv_heads, backend.head_dim
    sizes = [len(t) for t in ids]
    rows = list(zip(np.cumsum([0] + sizes[:-1]).tolist(), sizes))
    x = backend.embed_text(torch.cat(ids)).to(backend.dtype)                                  # [N, H]
    pos = torch.cat([s.position + torch.arange(n) for s, n in zip(seqs, sizes)])
    cos, sin = backend.rotary.cos_sin(pos, backend.device)                                    # [N, D]
    cos, sin = cos[:, None, :], sin[:, None, :]
    for li, layer in enumerate(dec.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = _rotate(attn.q_proj(h).view(-1, nq, D), cos, sin)
        k = _rotate(attn.k_proj(h).view(-1, nkv, D), cos, sin)
        v = attn.v_proj(h).view(-1, nkv, D)
        out = torch.empty(len(pos), nq * D, dtype=x.dtype, device=x.device)
        for (a, n), s in zip(rows, seqs):
            keys, values = s.cache.append(li, k[a:a + n].transpose(0, 1), v[a:a + n].transpose(0, 1))
            out[a:a + n] = _attend(q[a:a + n], keys, values, attn.scaling)
        x = x + attn.o_proj(out)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    last = torch.tensor([a + n - 1 for a, n in rows])
    logits = backend.lm_head(dec.norm(x.index_select(0, last.to(x.device)))).float()          # [B, vocab]
    for s, n in zip(seqs, sizes):
        s.cache.length += n
        s.position += n
    return logits


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float) -> torch.Tensor:
    """q [T, q_heads, D] (the last T of the L keys' positions) over keys, values
    [kv_heads, L, D], causal within the T -> [T, q_heads * D]. One fused kernel; query heads
    share their K,V head (grouped-query attention) without copying K,V."""
    T, nq, D = q.shape
    L = keys.shape[1]
    mask = None
    if T > 1:           # bottom-right causal: query t sees keys up to L - T + t
        mask = torch.arange(L, device=q.device)[None, :] <= (L - T + torch.arange(T, device=q.device))[:, None]
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys[None], values[None], attn_mask=mask,
                                         scale=scaling, enable_gqa=nq != keys.shape[0])          # [1, nq, T, D]
    return out[0].transpose(0, 1).reshape(T, nq * D)


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on [N, heads, D] at each row's position (cos, sin [N, 1, D] float32)."""
    f = t.float()
    return (f * cos + rotate_half(f) * sin).to(t.dtype)
