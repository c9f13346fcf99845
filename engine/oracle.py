"""Relevance oracles: embed chunks and questions into one space; inner product = relevance.

kvpress-style: each oracle is a small dataclass; normalisation and identity live in the base.
Vectors are L2-normalised float32, so FAISS inner product is cosine similarity.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from .backend import HFCausalBackend
from .chunkkv import ChunkKV


@dataclass
class RelevanceOracle:
    """Base. `identity` names everything the vectors depend on (stored with them)."""

    name: str = "base"

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def identity(self) -> str:
        raise NotImplementedError

    def chunk_vector(self, chunk: ChunkKV) -> torch.Tensor:
        """A stored chunk (any level) -> [dim] float32, L2-normalised."""
        return _unit(self._chunk(chunk))

    def question_vector(self, question: str) -> torch.Tensor:
        """question text -> [dim] float32, L2-normalised."""
        return _unit(self._question(question))

    def _chunk(self, chunk: ChunkKV) -> torch.Tensor:
        raise NotImplementedError

    def _question(self, question: str) -> torch.Tensor:
        raise NotImplementedError


def _unit(v: torch.Tensor) -> torch.Tensor:
    v = v.float().flatten()
    return v / v.norm().clamp_min(1e-12)


@dataclass
class KeyQueryOracle(RelevanceOracle):
    """Model-internal: a chunk is the mean pre-RoPE key of its visual tokens at chosen layers;
    a question is the mean pre-RoPE query of its tokens at the same layers (query heads
    averaged within their KV group). Both are centred per layer/head by the key mean of the
    prompt prefix, so the shared component every key carries does not dominate the score.

    layers: which layers to use (default: the middle third)."""

    backend: HFCausalBackend | None = None
    prefix: ChunkKV | None = None
    layers: tuple[int, ...] = ()
    name: str = "keyquery"
    _center: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self):
        be = self.backend
        if not self.layers:
            n = be.num_layers
            self.layers = tuple(range(n // 3, max(n // 3 + 1, 2 * n // 3)))
        # [len(layers), kv_heads, head_dim]
        self._center = self.prefix.keys[list(self.layers)].float().mean(2)

    @property
    def dim(self) -> int:
        return len(self.layers) * self.backend.num_kv_heads * self.backend.head_dim

    @property
    def identity(self) -> str:
        h = hashlib.sha256(f"{self.name}|{self.backend.weights_id}|{self.layers}".encode()).hexdigest()[:12]
        return f"{self.name}-{h}"

    def _chunk(self, chunk: ChunkKV) -> torch.Tensor:
        vis = ~chunk.text_mask
        keys = chunk.keys[list(self.layers)][:, :, vis] if vis.any() else chunk.keys[list(self.layers)]
        return keys.float().mean(2) - self._center

    @torch.no_grad()
    def _question(self, question: str) -> torch.Tensor:
        be = self.backend
        ids = be.tokenize(question)
        out = be.forward(be.embed_text(ids), logits=False, queries=True, kv=False)
        q = out.queries[list(self.layers)].float()                       # [l, Hq, T, D]
        l, Hq, T, D = q.shape
        q = q.view(l, be.num_kv_heads, Hq // be.num_kv_heads, T, D).mean((2, 3))
        return q - self._center
