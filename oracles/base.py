"""Relevance oracles: embed chunks and questions into one space; inner product = relevance.

kvpress-style: each oracle is a small dataclass; normalisation and identity live in the base.
Vectors are L2-normalised float32, so FAISS inner product is cosine similarity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from videokv.engine.chunkkv import ChunkKV


@dataclass
class RelevanceOracle:
    """Base. `identity` names everything the vectors depend on (stored with them)."""

    name: str = "base"
    # The span counter's thresholds on this oracle's scores ({"chunk": t, "frame": t}),
    # measured on its weights and kept with them; None: not calibrated (query/counting.py).
    count_thresholds: dict | None = None
    # True when chunk_vector needs the chunk's frames (the pipeline passes them).
    needs_frames: ClassVar[bool] = False
    # True when question_vector runs the LLM itself (it then shares the LLM's lock).
    uses_backend: ClassVar[bool] = False

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
            return unit(self._chunk_frames(chunk, frames))
        return unit(self._chunk(chunk))

    def chunk_and_frame_vectors(self, chunk: ChunkKV, frames: torch.Tensor | None = None,
                                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(chunk_vector [dim], per-frame vectors [N, dim] or None). Oracles that score single
        frames in the chunks' space return them too (the span counter counts appearances
        over them, query/counting.py); the rest return None."""
        return self.chunk_vector(chunk, frames), None

    def question_vector(self, question: str) -> torch.Tensor:
        """question text -> [dim] float32, L2-normalised."""
        return unit(self._question(question))

    def _chunk(self, chunk: ChunkKV) -> torch.Tensor:
        raise NotImplementedError

    def _chunk_frames(self, chunk: ChunkKV, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _question(self, question: str) -> torch.Tensor:
        raise NotImplementedError


def unit(v: torch.Tensor) -> torch.Tensor:
    v = v.float().flatten()
    return v / v.norm().clamp_min(1e-12)
