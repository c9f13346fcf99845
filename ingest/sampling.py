"""Sampling a video's frames at a target rate with PyAV, in time order and in batches, so a
long video is never all in memory (`iter_frames`; `sample_frames` for all at once): the
target times (`sample_targets`, capped at VIDEOKV_MAX_FRAMES), a decode cursor that seeks
when the next target is far enough ahead and the container's keyframe index says a seek
skips decoding, and the chosen frames turned upright and resized.

Opening, probing and the errors a bad file raises are `video.py`'s; times are relative to
the stream's start, as there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from .video import TruncatedVideo, VideoInfo, decode_frames, frame_pts, gap_tolerance, open_video, probe, video_stream

# A seek costs one GOP of decoding; below this spacing, decoding forward is cheaper.
SEEK_THRESHOLD_S = 2.0
# Frames within this much after a target still count as "at" the target (float rounding
# of pts * time_base, e.g. 0.99999999 vs 1.0).
TIME_EPS = 1e-4


@dataclass
class SampledFrames:
    """Frames picked for a list of target times.

    frames:     uint8 [N, H, W, 3] RGB (H, W = `size` if resizing, else the source's).
    timestamps: float64 [N] seconds, the chosen frames' own times (pts-based).
    extra:      uint8 [N, h, w, 3] the same frames at a second size (`extra_size`; OCR reads
                them near native resolution), or None.
    pts:        int64 [N] the chosen frames' pts in `time_base` units (source identity).
    targets:    float64 [N] the target time each frame was chosen for.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    pts: np.ndarray
    targets: np.ndarray
    time_base: Fraction = field(default=Fraction(1, 1))
    extra: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @staticmethod
    def concat(parts: list["SampledFrames"], size: tuple[int, int] | None = None) -> "SampledFrames":
        if not parts:
            w, h = size or (0, 0)
            return SampledFrames(np.zeros((0, h, w, 3), np.uint8), np.zeros(0), np.zeros(0, np.int64), np.zeros(0))
        return SampledFrames(
            np.concatenate([p.frames for p in parts]),
            np.concatenate([p.timestamps for p in parts]),
            np.concatenate([p.pts for p in parts]),
            np.concatenate([p.targets for p in parts]),
            parts[0].time_base,
            np.concatenate([p.extra for p in parts]) if parts[0].extra is not None else None,
        )


def sample_targets(duration: float, fps: float, max_frames: int | None = None) -> np.ndarray:
    """Target times float64 [N]: 0, 1/fps, 2/fps, ... < duration, for any length. With a cap
    `max_frames` and more targets than that: `max_frames` times spread uniformly
    (k * duration / max_frames), i.e. sampled at `effective_fps` instead."""
    if fps <= 0 or (max_frames is not None and max_frames <= 0):
        raise ValueError("fps and max_frames must be positive")
    count = int(np.ceil(duration * fps - 1e-9)) if duration > 0 else 1
    count = max(count, 1)
    if max_frames is None or count <= max_frames:
        return np.arange(count, dtype=np.float64) / fps
    return np.arange(max_frames, dtype=np.float64) * (duration / max_frames)


def effective_fps(duration: float, fps: float, max_frames: int | None = None) -> float:
    """The rate a video is really sampled at: `fps`, or lower where the cap applies."""
    n = len(sample_targets(duration, fps, max_frames))
    return fps if max_frames is None or n < max_frames or duration <= 0 else n / duration


class _Cursor:
    """Decode position in one stream with one frame of look-ahead."""

    def __init__(self, container, stream, path: Path, start_pts: int):
        self.container, self.stream, self.path, self.start_pts = container, stream, path, start_pts
        self.tb = stream.time_base
        self.keyframes = _keyframe_times(stream, start_pts)
        self.decoded = self.seeks = 0
        self._restart()

    def _restart(self) -> None:
        self._frames = decode_frames(self.container, self.stream, self.path)
        self.prev: av.VideoFrame | None = None  # latest frame consumed
        self.prev_pts: int | None = None
        self._next: av.VideoFrame | None = None
        self._next_pts: int | None = None
        self._eof = False
        self._min_pts: int | None = None  # after a seek: drop frames before the first

    def time(self, pts: int) -> float:
        return float((pts - self.start_pts) * self.tb)

    def peek(self) -> tuple[av.VideoFrame, int] | None:
        while self._next is None and not self._eof:
            frame = next(self._frames, None)
            if frame is None:
                self._eof = True
                break
            self.decoded += 1
            fallback = (self.prev_pts + 1) if self.prev_pts is not None else self.start_pts
            pts = frame_pts(frame, fallback)
            # Open-GOP leading pictures after a seek come out with pts before the
            # keyframe and reference frames we never decoded: drop them.
            if self._min_pts is None:
                self._min_pts = pts
            elif pts < self._min_pts or (self.prev_pts is not None and pts <= self.prev_pts):
                continue
            self._next, self._next_pts = frame, pts
        return None if self._next is None else (self._next, self._next_pts)

    def advance_to(self, target: float) -> None:
        """Consume frames whose time is <= target (+eps)."""
        while (nxt := self.peek()) is not None and self.time(nxt[1]) <= target + TIME_EPS:
            self.prev, self.prev_pts = nxt
            self._next = None

    def seek(self, target: float) -> None:
        offset = self.start_pts + int(np.floor(max(0.0, target) / self.tb))
        self.container.seek(offset, stream=self.stream, backward=True, any_frame=False)
        self.seeks += 1
        self._restart()

    def seek_helps(self, target: float) -> bool:
        """Whether seeking to `target` skips decoding: it lands on the last keyframe at or
        before the target, so only if that keyframe is past the frame decoded last. Without
        a keyframe index (raw streams, some containers): assume it does."""
        if self.keyframes is None:
            return True
        at = self.time(self.prev_pts) if self.prev_pts is not None else 0.0
        k = int(np.searchsorted(self.keyframes, target + TIME_EPS, side="right")) - 1
        return k >= 0 and self.keyframes[k] > at + TIME_EPS


def _keyframe_times(stream, start_pts: int) -> np.ndarray | None:
    """Seconds of the stream's keyframes from the container's index (read at open for mp4
    and mov; cue points for matroska), sorted; None when the container keeps none. No
    decoding. A file with keyframes hours apart must not be sampled by seeking: every seek
    would decode again from the same keyframe (quadratic in the video's length)."""
    try:
        ts = [e.timestamp for e in stream.index_entries if e.is_keyframe]
    except Exception:  # noqa: BLE001 - an index we cannot read is an index we do not use
        return None
    if not ts:
        return None
    return np.sort(np.asarray([float((t - start_pts) * stream.time_base) for t in ts]))


def _choose(cursor: _Cursor, target: float, seek: bool) -> tuple[av.VideoFrame, int] | None:
    """The frame for `target`: the latest with time <= target; if the video has none
    that early, its first frame. None past the end of the stream."""
    if seek and (cursor.prev_pts is None or target - cursor.time(cursor.prev_pts) > SEEK_THRESHOLD_S) \
            and cursor.seek_helps(target):
        back = 0.0
        while True:
            cursor.seek(target - back)
            first = cursor.peek()
            if first is None or cursor.time(first[1]) <= target + TIME_EPS or target - back <= 0:
                break
            # The seek landed after the target (inexact index): go further back.
            back = back * 4 if back else 1.0
    cursor.advance_to(target)
    if cursor.prev is not None:
        return cursor.prev, cursor.prev_pts
    return cursor.peek()


def iter_frames(
    path: str | os.PathLike,
    fps: float,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    batch_size: int = 16,
    mode: str = "auto",
    dedupe: bool = True,
    info: VideoInfo | None = None,
    stats: dict | None = None,
    extra_size: tuple[int, int] | None | bool = False,
) -> Iterator[SampledFrames]:
    """Sample the video at `fps` (capped at `max_frames`) and yield batches of at most
    `batch_size` frames, in time order, so a long video is never all in memory.

    size: (W, H) to resize to, or None for the source size.
    mode: "sequential" decodes every frame; "seek" seeks to each target whose gap from
      the last decoded frame exceeds SEEK_THRESHOLD_S; "auto" seeks when the target
      spacing is >= SEEK_THRESHOLD_S. Both give the same frames for the same targets.
    dedupe: skip a target whose chosen frame is the one already emitted (sampling
      faster than the source's frame rate), so no frame appears twice.
    stats: filled with "decoded" (frames) and "seeks" when given.
    extra_size: also each frame at this (W, H) (None: the source's size) in `.extra`, from
      the same decode (False: not at all).
    """
    path = Path(path)
    info = info or probe(path)
    targets = sample_targets(info.duration, fps, max_frames)
    spacing = float(targets[1] - targets[0]) if len(targets) > 1 else 0.0
    if mode not in ("auto", "seek", "sequential"):
        raise ValueError(f"unknown sampling mode {mode!r}")
    seek = mode == "seek" or (mode == "auto" and spacing >= SEEK_THRESHOLD_S)
    turns = info.rotation
    reformat = _reformat(size, turns)
    reformat_extra = None if extra_size is False else _reformat(extra_size, turns)

    with open_video(path) as container:
        stream = video_stream(container, path)
        cursor = _Cursor(container, stream, path, info.start_pts)
        batch: list[tuple] = []
        last_pts = None
        for target in targets:
            chosen = _choose(cursor, float(target), seek)
            frame, pts = chosen if chosen is not None else (None, None)
            frame_end = None if frame is None else cursor.time(pts + (frame.duration or 0))
            if frame is None or (cursor.peek() is None and target - frame_end > gap_tolerance(info.fps)):
                # The stream ended long before the duration probe promised.
                raise TruncatedVideo(path, f"{path.name} ends at {frame_end or 0:.1f} s, before its stated "
                                           f"length of {info.duration:.1f} s: it is truncated or damaged.")
            if dedupe and pts == last_pts:
                continue
            last_pts = pts
            batch.append((_upright(frame.to_ndarray(**reformat), turns), cursor.time(pts), pts, float(target),
                          None if reformat_extra is None else _upright(frame.to_ndarray(**reformat_extra), turns)))
            if len(batch) == batch_size:
                yield _batch(batch, stream.time_base)
                batch = []
            if stats is not None:
                stats.update(decoded=cursor.decoded, seeks=cursor.seeks)
        if batch:
            yield _batch(batch, stream.time_base)
        if stats is not None:
            stats.update(decoded=cursor.decoded, seeks=cursor.seeks)


def _reformat(size: tuple[int, int] | None, turns: int) -> dict:
    """PyAV reformat arguments: RGB at (W, H) as displayed (resized as stored, then turned
    upright: a quarter turn swaps the sides); None: the source's size."""
    out = {"format": "rgb24"}
    if size:
        width, height = size
        w, h = (height, width) if turns % 2 else (width, height)
        out.update(width=w, height=h, interpolation="AREA")
    return out


def _upright(pixels: np.ndarray, turns: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels


def _batch(items, time_base) -> SampledFrames:
    frames, times, pts, targets, extra = zip(*items)
    return SampledFrames(
        np.stack(frames), np.asarray(times, np.float64), np.asarray(pts, np.int64),
        np.asarray(targets, np.float64), Fraction(time_base),
        None if extra[0] is None else np.stack(extra),
    )


def sample_frames(
    path: str | os.PathLike,
    fps: float,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    mode: str = "auto",
    dedupe: bool = True,
    info: VideoInfo | None = None,
) -> SampledFrames:
    """All sampled frames at once: `iter_frames` concatenated. frames uint8 [N,H,W,3]."""
    parts = list(iter_frames(path, fps, max_frames, size, batch_size=256, mode=mode, dedupe=dedupe, info=info))
    return SampledFrames.concat(parts, size)
