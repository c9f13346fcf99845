"""The units the whole service stores, pages and decodes: `ChunkKV` (a chunk's pre-RoPE K,V at
one level), its plan entry `ChunkSpan`, and what prefill takes and gives per chunk."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from enum import IntEnum

import torch

LEVELS = ("full", "L", "H", "G")


@dataclass(frozen=True)
class ChunkSpan:
    """One chunk of a video's plan: sampled frames [frame_start, frame_end) and seconds
    [t_start, t_end) (the first frame's timestamp to the next chunk's first timestamp)."""

    index: int
    frame_start: int
    frame_end: int
    t_start: float
    t_end: float

    @property
    def num_frames(self) -> int:
        return self.frame_end - self.frame_start

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ChunkSpan":
        return cls(int(d["index"]), int(d["frame_start"]), int(d["frame_end"]), float(d["t_start"]), float(d["t_end"]))


class TokenKind(IntEnum):
    """What a cached token is. TEXT tokens (timestamps, prompt text) are never compressed."""

    TEXT = 0
    VISUAL = 1


@dataclass
class ChunkKV:
    """Pre-RoPE keys and values of one chunk at one compression level.

    keys, values: [layers, kv_heads, tokens, head_dim], *not* rotated: they are rotated to
        whatever contiguous positions they are loaded at (DESIGN.md, KV mathematics).
    kinds: [tokens] uint8, a `TokenKind` per token.
    index: chunk number in the video; -1 for the prompt prefix (system prompt).
    frame_start, frame_end: sampled-frame range [start, end).
    t_start, t_end: time span in seconds (first frame's timestamp, end of last frame).
    level: "full" (uncompressed), "L" (low compression), "H" (high compression) or "G" (the
        gist of a group of chunks: their H-KVs pooled once more; index = the group's first
        chunk, frames and times span the group).
    fingerprint: the model fingerprint (engine.config) these bytes were made with.
    """

    keys: torch.Tensor
    values: torch.Tensor
    kinds: torch.Tensor
    index: int
    frame_start: int = 0
    frame_end: int = 0
    t_start: float = 0.0
    t_end: float = 0.0
    level: str = "full"
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.keys.shape != self.values.shape or self.keys.dim() != 4:
            raise ValueError(f"keys {tuple(self.keys.shape)} and values {tuple(self.values.shape)} "
                             "must both be [layers, kv_heads, tokens, head_dim]")
        if self.kinds.shape != (self.keys.shape[2],):
            raise ValueError(f"kinds has shape {tuple(self.kinds.shape)}, expected ({self.keys.shape[2]},)")
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")

    @property
    def layers(self) -> int:
        return self.keys.shape[0]

    @property
    def kv_heads(self) -> int:
        return self.keys.shape[1]

    @property
    def tokens(self) -> int:
        return self.keys.shape[2]

    @property
    def head_dim(self) -> int:
        return self.keys.shape[3]

    @property
    def dtype(self) -> torch.dtype:
        return self.keys.dtype

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    @property
    def text_mask(self) -> torch.Tensor:
        """[tokens] bool: True where the token is TEXT (kept dense at every level)."""
        return self.kinds == TokenKind.TEXT

    def with_kv(self, keys: torch.Tensor, values: torch.Tensor, kinds: torch.Tensor, level: str) -> "ChunkKV":
        """The same chunk (index, span, fingerprint) with other tensors, e.g. compressed."""
        return replace(self, keys=keys, values=values, kinds=kinds, level=level)

    def to(self, device=None, dtype=None) -> "ChunkKV":
        return replace(self, keys=self.keys.to(device=device, dtype=dtype),
                       values=self.values.to(device=device, dtype=dtype),
                       kinds=self.kinds.to(device=device))


@dataclass
class ChunkInput:
    """One chunk to prefill. visual: [frames * tokens_per_frame, hidden] vision-token embeddings."""

    index: int
    visual: torch.Tensor
    frame_start: int = 0
    frame_end: int = 0
    t_start: float = 0.0
    t_end: float = 0.0
    text: str = ""     # the chunk's text channel line (`text_line`), "" when none


@dataclass
class PrefilledChunk:
    """A chunk's KVs at each level. `full` is kept only when asked for (tests, window 'full')."""

    L: ChunkKV
    H: ChunkKV
    full: ChunkKV | None = None

    def level(self, name: str) -> ChunkKV:
        got = {"L": self.L, "H": self.H, "full": self.full}[name]
        if got is None:
            raise ValueError(f"chunk {self.L.index}: level {name!r} was not kept")
        return got
