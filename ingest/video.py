"""Video input with PyAV: open, probe and hash a file (sampling its frames: `sampling.py`).

Every bad input raises a `VideoError` subclass with a stable `code` (for the API's 4xx
mapping) and a one-sentence message naming the file. Nothing here touches the store.

Times: every timestamp is in seconds *relative to the video stream's start*
(`(pts - start_pts) * time_base`), so a file whose first frame has pts 0 gives times
starting at 0.0; variable frame rate is handled because times come from pts, never from
frame counts.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av

from videokv.errors import VideoKVError
from videokv.hashing import sha256_file

MIN_SIDE = 16
MAX_SIDE = 8192
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


def open_video(path: Path) -> av.container.InputContainer:
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


def video_stream(container, path: Path):
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


def decode_frames(container, stream, path: Path) -> Iterator[av.VideoFrame]:
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


def frame_pts(frame: av.VideoFrame, fallback: int) -> int:
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
    with open_video(path) as container:
        stream = video_stream(container, path)
        tb = stream.time_base
        first = next(iter(decode_frames(container, stream, path)), None)
        if first is None:
            raise NoFrames(path, f"{path.name} has a video stream but no decodable frames.")
        _check_resolution(path, first.width, first.height)
        start_pts = int(stream.start_time) if stream.start_time is not None else frame_pts(first, 0)

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
    for frame in decode_frames(container, stream, path):
        # The end is the last-shown frame's pts + its duration (durations of earlier
        # frames can be wrong: muxers assign them in decode order with B-frames).
        if frame.pts is not None and (last_pts is None or frame.pts > last_pts):
            last_pts, end = frame.pts, frame.pts + (frame.duration or 0)
    end_s = float((end - start_pts) * tb) if end is not None else None
    if end_s is None or (stated is not None and end_s < stated - gap_tolerance(fps)):
        length = f" of {stated:.1f} s" if stated is not None else ""
        raise TruncatedVideo(path, f"{path.name} stops before its stated length{length}: it is truncated or damaged.")
    return end_s


def gap_tolerance(fps: float) -> float:
    """How far the video may end before its stated end (or a target) without being cut."""
    return max(1.0, 3.0 / fps) if fps > 0 else 1.0
