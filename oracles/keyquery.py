"""The model-internal oracle: relevance from the LLM's own keys and queries (any model, no
extra weights)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from videokv.engine.backend import HFCausalBackend
from videokv.engine.chunkkv import ChunkKV

from .base import RelevanceOracle


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
    uses_backend: ClassVar[bool] = True
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
