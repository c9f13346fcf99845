"""Chunk plans: consecutive groups of N sampled frames with exact start/end times.

A chunk covers sampled frames [frame_start, frame_end) and the time span
[t_start, t_end): t_start is its first frame's timestamp, t_end the next chunk's first
timestamp; the last chunk ends one sampling interval after its last frame, capped at
the video's duration. Times come from the frames' own timestamps, so a variable frame
rate source or a max-frames cap gives correct spans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from videokv.engine.chunkkv import ChunkSpan

from .stream import last_chunk_end


@dataclass(frozen=True)
class ChunkPlan:
    chunk_frames: int
    duration: float
    chunks: tuple[ChunkSpan, ...]

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self):
        return iter(self.chunks)

    def __getitem__(self, i: int) -> ChunkSpan:
        return self.chunks[i]

    @property
    def num_frames(self) -> int:
        return self.chunks[-1].frame_end if self.chunks else 0

    def chunk_at(self, t: float) -> ChunkSpan:
        """The chunk whose span contains time t (clamped to the first/last chunk)."""
        starts = [c.t_start for c in self.chunks]
        i = int(np.searchsorted(starts, t, side="right")) - 1
        return self.chunks[min(max(i, 0), len(self.chunks) - 1)]

    def to_dict(self) -> dict:
        return {"chunk_frames": self.chunk_frames, "duration": self.duration,
                "chunks": [c.to_dict() for c in self.chunks]}

    @classmethod
    def from_dict(cls, d: dict) -> "ChunkPlan":
        return cls(int(d["chunk_frames"]), float(d["duration"]), tuple(ChunkSpan.from_dict(c) for c in d["chunks"]))


def plan_chunks(
    timestamps, duration: float, chunk_frames: int, sample_fps: float | None = None
) -> ChunkPlan:
    """Build the plan from sampled frame timestamps float [N] (increasing seconds).

    chunk_frames: frames per chunk; the last chunk may be shorter. sample_fps: the sampling rate, used for the last chunk's end
      (last timestamp + 1/fps, capped at duration); without it the median spacing of
      the timestamps is used, or the duration when there is a single frame.
    """
    if chunk_frames <= 0:
        raise ValueError("chunk_frames must be positive")
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.ndim != 1:
        raise ValueError("timestamps must be 1-D")
    if len(ts) and np.any(np.diff(ts) <= 0):
        raise ValueError("timestamps must be strictly increasing")
    if len(ts) == 0:
        return ChunkPlan(chunk_frames, float(duration), ())

    if sample_fps:
        step = 1.0 / sample_fps
    elif len(ts) > 1:
        step = float(np.median(np.diff(ts)))
    else:
        step = float(duration)
    last_end = last_chunk_end(float(ts[-1]), duration, step)

    chunks = []
    for index, start in enumerate(range(0, len(ts), chunk_frames)):
        end = min(start + chunk_frames, len(ts))
        t_end = float(ts[end]) if end < len(ts) else float(last_end)
        chunks.append(ChunkSpan(index, start, end, float(ts[start]), t_end))
    return ChunkPlan(chunk_frames, float(duration), tuple(chunks))
