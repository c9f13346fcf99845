"""The toy world's relevance oracle: the trained tower's retrieval head and MiniLM, two
encoders into one space (it plugs in as any `RelevanceOracle` does)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.engine.chunkkv import ChunkKV
from videokv.oracles.base import RelevanceOracle, unit


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
            from videokv.oracles.minilm import MiniLM
            self.minilm = MiniLM.load()

    @property
    def dim(self) -> int:
        return self.minilm.dim + 1

    @property
    def identity(self) -> str:
        from .tower import NULL_WEIGHT
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
        from .tower import chunk_retrieval_vector
        if frames is None:
            raise ValueError(f"the {self.name} oracle embeds a chunk from its frames: pass frames=")
        fv = self.frame_vectors(frames)
        return unit(chunk_retrieval_vector(fv[:, :-1])), fv

    def _question(self, question: str) -> torch.Tensor:
        from .tower import question_retrieval_vector
        return question_retrieval_vector(self.minilm.encode([question])[0])
