"""The text oracle: all-MiniLM-L6-v2 over a chunk's text channel (what is on screen, said
or subtitled), so a question about words finds the chunk that shows or says them, whatever
the visual oracle sees. Same space for chunks and questions: MiniLM sentence embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videokv.engine.chunkkv import ChunkKV

from .base import RelevanceOracle, unit


@dataclass
class TextOracle(RelevanceOracle):
    """minilm: a MiniLM (engine/minilm.py); None = the installed one, loaded on first use
    (a runtime that never meets text never loads it)."""

    minilm: object = None
    name: str = "text"

    @property
    def encoder(self):
        if self.minilm is None:
            from .minilm import MiniLM
            self.minilm = MiniLM.load()
        return self.minilm

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def identity(self) -> str:
        return f"{self.name}-{self.encoder.identity}"

    def text_vectors(self, texts: list[str]) -> torch.Tensor:
        """Chunk text lines -> [n, dim] float32, L2-normalised (one MiniLM batch)."""
        return self.encoder.encode(list(texts)) if texts else torch.zeros(0, self.dim)

    def chunk_vector(self, chunk: ChunkKV, frames: torch.Tensor | None = None, text: str = "") -> torch.Tensor:
        if not text.strip():
            raise ValueError(f"chunk {chunk.index} has no text: the text oracle indexes only chunks with text")
        return unit(self.text_vectors([text])[0])

    def _question(self, question: str) -> torch.Tensor:
        return self.encoder.encode([question])[0]
