"""Chunks as the frames arrive: decode -> sample -> chunk in one pass, so an ingest holds a
few chunks of frames whatever the video's length.

A chunk's span ends where the next chunk's first frame starts, so a chunk is complete one
frame after its last one; the last chunk ends one sampling interval after its last frame,
capped at the video's end. The spans are exactly `chunks.plan_chunks`' over the same
timestamps (tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from videokv.engine.chunkkv import ChunkSpan

from .sampling import SampledFrames


@dataclass
class ChunkFrames:
    """One chunk's sampled frames: span; frames uint8 [n, H, W, 3] at the model's size;
    times float64 [n] seconds; extra uint8 [n, h, w, 3] at the second size (OCR) or None."""

    span: ChunkSpan
    frames: np.ndarray
    times: np.ndarray
    extra: np.ndarray | None = None


def last_chunk_end(last_time: float, duration: float, step: float) -> float:
    """Where the last chunk ends: one sampling interval after its last frame, capped at the
    video's end (when the video ends after that frame)."""
    end = last_time + step
    return min(end, float(duration)) if duration > last_time else end


def stream_chunks(batches: Iterable[SampledFrames], chunk_frames: int, duration: float,
                  step: float) -> Iterator[ChunkFrames]:
    """ChunkFrames in order from batches of sampled frames in time order. step: the sampling
    interval (seconds between samples), for the last chunk's end."""
    if chunk_frames <= 0:
        raise ValueError("chunk_frames must be positive")
    frames: list[np.ndarray] = []
    times: list[float] = []
    extra: list[np.ndarray] = []
    index = start = 0

    def emit(n: int, t_end: float) -> ChunkFrames:
        nonlocal index, start
        out = ChunkFrames(ChunkSpan(index, start, start + n, float(times[0]), float(t_end)), np.stack(frames[:n]),
                          np.asarray(times[:n], np.float64), np.stack(extra[:n]) if extra else None)
        del frames[:n], times[:n], extra[:n]
        index, start = index + 1, start + n
        return out

    for batch in batches:
        for k in range(len(batch)):
            frames.append(batch.frames[k])
            times.append(float(batch.timestamps[k]))
            if batch.extra is not None:
                extra.append(batch.extra[k])
            if len(frames) == chunk_frames + 1:            # the next chunk's first frame ends this one
                yield emit(chunk_frames, times[chunk_frames])
    while frames:
        n = min(chunk_frames, len(frames))
        yield emit(n, times[n] if n < len(frames) else last_chunk_end(times[n - 1], duration, step))
