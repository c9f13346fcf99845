"""Relevance oracles: embed chunks and questions into one space; inner product = relevance.

kvpress-style: each oracle is a small dataclass; normalisation and identity live in the base.
Vectors are L2-normalised float32, so FAISS inner product is cosine similarity.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .backend import HFCausalBackend
from .chunkkv import ChunkKV


@dataclass
class RelevanceOracle:
    """Base. `identity` names everything the vectors depend on (stored with them)."""

    name: str = "base"
    # True when chunk_vector needs the chunk's frames (the pipeline passes them).
    needs_frames: ClassVar[bool] = False

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def identity(self) -> str:
        raise NotImplementedError

    def chunk_vector(self, chunk: ChunkKV, frames: torch.Tensor | None = None) -> torch.Tensor:
        """A stored chunk (any level) -> [dim] float32, L2-normalised.
        frames: the chunk's frames [N, 3, H, W] in [0, 1], for oracles with needs_frames."""
        if self.needs_frames:
            if frames is None:
                raise ValueError(f"the {self.name} oracle embeds a chunk from its frames: pass frames=")
            return _unit(self._chunk_frames(chunk, frames))
        return _unit(self._chunk(chunk))

    def chunk_and_frame_vectors(self, chunk: ChunkKV, frames: torch.Tensor | None = None,
                                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(chunk_vector [dim], per-frame vectors [N, dim] or None). Oracles that score single
        frames in the chunks' space return them too (the span counter counts appearances
        over them, query/counting.py); the rest return None."""
        return self.chunk_vector(chunk, frames), None

    def question_vector(self, question: str) -> torch.Tensor:
        """question text -> [dim] float32, L2-normalised."""
        return _unit(self._question(question))

    def _chunk(self, chunk: ChunkKV) -> torch.Tensor:
        raise NotImplementedError

    def _chunk_frames(self, chunk: ChunkKV, frames: torch.Tensor) -> torch.Tensor:
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


@dataclass
class DualEncoderOracle(RelevanceOracle):
    """Two encoders into all-MiniLM-L6-v2's space: a question is its MiniLM sentence
    embedding; a chunk is the sum of the toy-world tower's per-frame retrieval vectors
    (unit vectors scaled by P(event), so frames showing nothing add ~0), normalised.

    One extra coordinate (0 for questions, toytower.NULL_WEIGHT for chunks) keeps a chunk
    of empty frames from being normalised into a random direction: it scores ~0 instead.

    tower: a ToyWorldTower; minilm: a MiniLM (engine/minilm.py); batch: frames per tower call."""

    tower: object = None
    minilm: object = None
    batch: int = 64
    name: str = "dualenc"
    needs_frames: ClassVar[bool] = True

    def __post_init__(self):
        if self.tower is None:
            raise ValueError("DualEncoderOracle needs tower= (a ToyWorldTower)")
        if self.minilm is None:
            from .minilm import MiniLM
            self.minilm = MiniLM.load()

    @property
    def dim(self) -> int:
        return self.minilm.dim + 1

    @property
    def identity(self) -> str:
        from .toytower import NULL_WEIGHT
        return f"{self.name}-{self.tower.identity}-{self.minilm.identity}-n{NULL_WEIGHT:g}"

    @torch.no_grad()
    def frame_vectors(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [N, 3, H, W] -> [N, dim]: each frame's retrieval vector (unit vector times
        P(event)) with a 0 null coordinate, so its dot with a question vector is the frame's
        cosine to the question scaled by P(event)."""
        if len(frames) == 0:
            return torch.zeros(0, self.dim)
        vecs = torch.cat([self.tower.retrieval_vectors(frames[i:i + self.batch]).cpu()
                          for i in range(0, len(frames), self.batch)])
        return torch.nn.functional.pad(vecs.float(), (0, 1))

    def _chunk_frames(self, chunk: ChunkKV, frames: torch.Tensor) -> torch.Tensor:
        return self.chunk_and_frame_vectors(chunk, frames)[0]

    def chunk_and_frame_vectors(self, chunk: ChunkKV, frames: torch.Tensor | None = None):
        """The chunk vector is the normalised sum of its frames' vectors (toytower.chunk_retrieval_vector)."""
        from .toytower import chunk_retrieval_vector
        if frames is None:
            raise ValueError(f"the {self.name} oracle embeds a chunk from its frames: pass frames=")
        fv = self.frame_vectors(frames)
        return _unit(chunk_retrieval_vector(fv[:, :-1])), fv

    def _question(self, question: str) -> torch.Tensor:
        from .toytower import question_retrieval_vector
        return question_retrieval_vector(self.minilm.encode([question])[0])
