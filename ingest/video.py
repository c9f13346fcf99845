"""Video input with PyAV: probe, sample frames at a target fps, hash files.

Every bad input raises a `VideoError` subclass with a stable `code` (for the API's 4xx
mapping) and a one-sentence message naming the file. Nothing here touches the store.

Times: every timestamp is in seconds *relative to the video stream's start*
(`(pts - start_pts) * time_base`), so a file whose first frame has pts 0 gives times
starting at 0.0; variable frame rate is handled because times come from pts, never from
frame counts.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from videokv.errors import VideoKVError
from videokv.hashing import sha256_file

MIN_SIDE = 16
MAX_SIDE = 8192
# A seek costs one GOP of decoding; below this spacing, decoding forward is cheaper.
SEEK_THRESHOLD_S = 2.0
# Frames within this much after a target still count as "at" the target (float rounding
# of pts * time_base, e.g. 0.99999999 vs 1.0).
TIME_EPS = 1e-4
# Decode errors tolerated in one pass before the file is declared corrupt (a few broken
# packets are concealed by decoders; a stream of them is not a usable video).
MAX_DECODE_ERRORS = 16

# Demuxers we open. Anything else (ffmpeg's text "tty" demuxer that turns any text file
# into a video, playlists such as HLS/concat that open *other* files, image pipes) is
# refused: uploads are untrusted. Audio containers are included so an audio file is
# reported as audio-only rather than as "not a video".
ALLOWED_DEMUXERS = (
    "mov,mp4,matroska,webm,avi,flv,mpegts,mpeg,ogg,asf,gif,h264,hevc,m4v,"
    "mp3,aac,wav,flac"
)
_OPEN_OPTIONS = {"format_whitelist": ALLOWED_DEMUXERS, "protocol_whitelist": "file"}
_ATTACHED_PIC = 0x0400  # AV_DISPOSITION_ATTACHED_PIC: cover art, not video

# File signatures of containers we read: a file that starts like one of these but
# cannot be opened is damaged/truncated rather than "not a video".
_SIGNATURES = (
    (4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"),
    (0, b"\x1a\x45\xdf\xa3"), (0, b"RIFF"), (0, b"OggS"), (0, b"FLV"),
    (0, b"\x30\x26\xb2\x75"), (0, b"\x00\x00\x01\xba"), (0, b"GIF8"),
)


class VideoError(VideoKVError):
    """A video file we cannot use. `code` is stable; `str(err)` is for the user."""

    code = "video_error"
    http_status = 422

    def __init__(self, path: str | os.PathLike, message: str):
        self.path = str(path)
        super().__init__(message)


class VideoNotFound(VideoError):
    code = "file_not_found"


class EmptyFile(VideoError):
    code = "empty_file"


class NotAVideo(VideoError):
    code = "not_a_video"


class TruncatedVideo(VideoError):
    code = "truncated"


class NoFrames(VideoError):
    code = "no_frames"


class AudioOnly(VideoError):
    code = "audio_only"


class BadResolution(VideoError):
    code = "bad_resolution"


class UnsupportedCodec(VideoError):
    code = "unsupported_codec"


class CorruptVideo(VideoError):
    code = "corrupt"


ERROR_CODES = tuple(c.code for c in VideoError.__subclasses__())


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns about a file. `duration` is seconds from the first frame's
    timestamp to the end of the video stream; `fps` is the average rate (a VFR file
    has no single rate); `frame_count` is None when the container does not say."""

    path: str
    container: str
    codec: str
    width: int
    height: int
    duration: float
    fps: float
    frame_count: int | None
    has_audio: bool
    start_pts: int
    time_base: Fraction
    size_bytes: int
    rotation: int = 0         # counter-clockwise quarter turns to display it upright (0-3)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["time_base"] = str(self.time_base)
        return d


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


def content_hash(path: str | os.PathLike) -> str:
    """sha256 hex digest of the file's bytes, read in 1 MiB blocks."""
    return sha256_file(path)


# ---------------------------------------------------------------- opening and probing


def _looks_like_container(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(189)
    if len(head) == 189 and head[0] == 0x47 and head[188] == 0x47:  # MPEG-TS sync bytes
        return True
    return any(head[off:off + len(sig)] == sig for off, sig in _SIGNATURES)


def _open(path: Path) -> av.container.InputContainer:
    """Open `path` for reading with the demuxer allow-list; map failures to VideoError."""
    if not path.exists():
        raise VideoNotFound(path, f"The file {path.name} does not exist.")
    if not path.is_file():
        raise NotAVideo(path, f"{path.name} is not a regular file.")
    if path.stat().st_size == 0:
        raise EmptyFile(path, f"The file {path.name} is empty (0 bytes).")
    try:
        return av.open(str(path.resolve()), "r", options=dict(_OPEN_OPTIONS))
    except Exception as exc:  # av raises many FFmpegError subclasses (and OSError)
        if _looks_like_container(path):
            raise TruncatedVideo(
                path, f"{path.name} looks like a video file but cannot be read: it is truncated or damaged."
            ) from exc
        raise NotAVideo(path, f"{path.name} is not a video file we can read.") from exc


def _video_stream(container, path: Path):
    """The first real video stream, with a decoder, threads on; else a clear error."""
    streams = [s for s in container.streams.video if not int(s.disposition) & _ATTACHED_PIC]
    if not streams:
        if container.streams.audio:
            raise AudioOnly(path, f"{path.name} contains only audio, no video stream.")
        if container.streams:
            raise NotAVideo(path, f"{path.name} contains no video stream.")
        raise NoFrames(path, f"{path.name} contains no video frames (the container is empty).")
    stream = streams[0]
    if stream.codec_context is None:
        raise UnsupportedCodec(path, f"{path.name} uses a video codec this server cannot decode.")
    _check_resolution(path, stream.codec_context.width, stream.codec_context.height)
    stream.thread_type = "AUTO"
    return stream


def _check_resolution(path: Path, width: int, height: int) -> None:
    # 0x0 means the container did not say; the first decoded frame is checked later.
    if (width or height) and not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise BadResolution(
            path,
            f"{path.name} is {width}x{height} pixels; each side must be between {MIN_SIDE} and {MAX_SIDE}.",
        )


def _decoded(container, stream, path: Path) -> Iterator[av.VideoFrame]:
    """Decode `stream` from the container's current position, in presentation order.

    Single broken packets are skipped (decoders conceal them); many raise CorruptVideo.
    A demuxer error (reading past the end of a cut file) raises TruncatedVideo."""
    errors = 0
    decoded_any = False
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            raise TruncatedVideo(path, f"{path.name} ends unexpectedly: it is truncated or damaged.") from exc
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            errors += 1
            if errors > MAX_DECODE_ERRORS:
                if not decoded_any:
                    raise NoFrames(path, f"{path.name} has a video stream but none of its frames can be decoded.") from exc
                raise CorruptVideo(path, f"{path.name} has too many undecodable frames.") from exc
            continue
        decoded_any = decoded_any or bool(frames)
        yield from frames


def _frame_pts(frame: av.VideoFrame, fallback: int) -> int:
    return int(frame.pts) if frame.pts is not None else fallback


def _scan_end_pts(container, stream) -> int | None:
    """Largest pts+duration over all packets (demux only, no decoding): the duration of
    files whose container does not state one (e.g. raw streams)."""
    end = None
    for packet in container.demux(stream):
        if packet.pts is not None:
            end = max(end or 0, packet.pts + (packet.duration or 0))
    return end


def probe(path: str | os.PathLike) -> VideoInfo:
    """Open, validate and describe a video. Decodes the first frame and the last ~2 s
    (to catch files cut short after a valid header); raises a VideoError subclass for
    anything unusable."""
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        tb = stream.time_base
        first = next(iter(_decoded(container, stream, path)), None)
        if first is None:
            raise NoFrames(path, f"{path.name} has a video stream but no decodable frames.")
        _check_resolution(path, first.width, first.height)
        start_pts = int(stream.start_time) if stream.start_time is not None else _frame_pts(first, 0)

        stated = float(stream.duration * tb) if stream.duration else None
        rate = stream.average_rate or stream.guessed_rate
        frame_count = int(stream.frames) or None
        if stated is None and container.duration:
            # Container duration covers all streams (audio may run longer): only a
            # starting point for the tail check, which measures the video's own end.
            guess = (container.start_time or 0) / 1e6 + container.duration / 1e6 - float(start_pts * tb)
        else:
            guess = stated
        if guess is None:
            container.seek(0)
            end = _scan_end_pts(container, stream)
            guess = float((end - start_pts) * tb) if end is not None else 0.0
        nominal_fps = float(rate) if rate else 0.0
        measured_end = _check_tail(container, stream, path, start_pts, guess, stated, nominal_fps)
        # Timestamps win over stated durations: an mp4 of a VFR stream with B-frames can
        # state a duration shorter than its last frame's timestamp.
        duration = max(stated or 0.0, measured_end or 0.0) or max(guess, 0.0)
        fps = frame_count / duration if frame_count and duration > 0 else nominal_fps
        turns = rotation_turns(first)
        width, height = (first.height, first.width) if turns % 2 else (first.width, first.height)
        return VideoInfo(
            path=str(path), container=container.format.name, codec=stream.codec_context.name,
            width=width, height=height, duration=duration, fps=fps,
            frame_count=frame_count, has_audio=bool(container.streams.audio),
            start_pts=start_pts, time_base=Fraction(tb), size_bytes=path.stat().st_size, rotation=turns,
        )


def rotation_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns (0-3) that show the frame upright: the display matrix
    a phone writes (`rotation`); as ffmpeg's autorotate, np.rot90(pixels, turns)."""
    try:
        degrees = int(round(float(frame.rotation or 0)))
    except (AttributeError, TypeError, ValueError):
        return 0
    return (round(degrees / 90)) % 4


def _check_tail(container, stream, path: Path, start_pts: int, guess: float, stated: float | None,
                fps: float) -> float | None:
    """Decode from the keyframe before `guess - 2 s` to the end and return the time the
    last frame ends. If the stream states its duration and the frames stop well before
    it, or no frame decodes there at all, the file was cut (an interrupted upload)."""
    if guess <= 0:
        return None
    tb = stream.time_base
    try:
        container.seek(start_pts + int(max(0.0, guess - 2.0) / tb), stream=stream, backward=True, any_frame=False)
    except av.error.FFmpegError:
        return None  # unseekable input (raw streams): nothing cheap to check
    last_pts, end = None, None
    for frame in _decoded(container, stream, path):
        # The end is the last-shown frame's pts + its duration (durations of earlier
        # frames can be wrong: muxers assign them in decode order with B-frames).
        if frame.pts is not None and (last_pts is None or frame.pts > last_pts):
            last_pts, end = frame.pts, frame.pts + (frame.duration or 0)
    end_s = float((end - start_pts) * tb) if end is not None else None
    if end_s is None or (stated is not None and end_s < stated - _gap_tolerance(fps)):
        length = f" of {stated:.1f} s" if stated is not None else ""
        raise TruncatedVideo(path, f"{path.name} stops before its stated length{length}: it is truncated or damaged.")
    return end_s


def _gap_tolerance(fps: float) -> float:
    """How far the video may end before its stated end (or a target) without being cut."""
    return max(1.0, 3.0 / fps) if fps > 0 else 1.0


# ---------------------------------------------------------------- sampling


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
        self._frames = _decoded(self.container, self.stream, self.path)
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
            pts = _frame_pts(frame, fallback)
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

    with _open(path) as container:
        stream = _video_stream(container, path)
        cursor = _Cursor(container, stream, path, info.start_pts)
        batch: list[tuple] = []
        last_pts = None
        for target in targets:
            chosen = _choose(cursor, float(target), seek)
            frame, pts = chosen if chosen is not None else (None, None)
            frame_end = None if frame is None else cursor.time(pts + (frame.duration or 0))
            if frame is None or (cursor.peek() is None and target - frame_end > _gap_tolerance(info.fps)):
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
