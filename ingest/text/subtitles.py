"""Subtitles: uploaded .srt / .vtt files and the video's own text subtitle stream.

    segs = parse_file("talk.srt")            # [TextSegment(source="subtitle"), ...]
    segs = embedded("talk.mkv")              # first text subtitle stream (mov_text, subrip, ass)

Markup is removed (<i>, <c.x>, <v Name>, {\\an8}-style ASS overrides, entities); a cue's
lines are joined with spaces. A file we cannot read raises BadSubtitles naming the line.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import av

from .segments import BadSubtitles, TextSegment

# A day of dense dialogue is about 2 MiB of SubRip: anything larger is not a subtitle file,
# and is refused before it is read (the API's upload limit for subtitle parts is the same).
MAX_BYTES = 4 * 1024 * 1024
# A cue is a line or two on screen; a longer one is cut here (words kept whole) so that no
# later step ever sees a megabyte-long line.
MAX_CUE_CHARS = 2000
_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{1,3})"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}(?:\s+.*)?$")
# Markup patterns that cannot backtrack: a tag may not contain its own opening character, so
# every scan from a '<' (or '{') ends at the next one: linear time whatever the input
# (`<[^>]*>` was quadratic on a run of '<': 250 KB of them took 36 s).
_TAG = re.compile(r"<[^<>]*>")             # <i>, </b>, <c.yellow>, <v Bob>, <00:01.500>
_ASS_OVERRIDE = re.compile(r"\{\\[^{}]*\}")  # {\an8}, {\i1}


def _seconds(h, m, s, ms) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def clean_text(text: str) -> str:
    """Cue text without markup, whitespace collapsed (newlines become spaces), at most
    MAX_CUE_CHARS characters (cut on a word boundary)."""
    text = _ASS_OVERRIDE.sub("", text).replace("\\N", " ").replace("\\n", " ")
    text = " ".join(html.unescape(_TAG.sub("", text)).split())
    if len(text) > MAX_CUE_CHARS:
        text = text[:MAX_CUE_CHARS + 1].rsplit(" ", 1)[0] if " " in text[:MAX_CUE_CHARS + 1] else text[:MAX_CUE_CHARS]
    return text


def _timing(line: str, lineno: int, fmt: str) -> tuple[float, float]:
    m = _TIMING.match(line)
    if not m:
        example = "00:00:01,000 --> 00:00:02,500" if fmt == "srt" else "00:01.000 --> 00:02.500"
        raise BadSubtitles(f"line {lineno}: expected a cue timing like '{example}', got {line.strip()[:60]!r}.")
    g = m.groups()
    if int(g[2]) >= 60 or int(g[6]) >= 60 or int(g[1]) >= 60 and g[0] is not None:
        raise BadSubtitles(f"line {lineno}: a cue time has more than 59 seconds or minutes: {line.strip()[:60]!r}.")
    start, end = _seconds(*g[:4]), _seconds(*g[4:])
    if end < start:
        raise BadSubtitles(f"line {lineno}: the cue ends ({end:.3f} s) before it starts ({start:.3f} s).")
    return start, end


def _blocks(lines: list[str]):
    """(first line number, lines) per blank-line-separated block (line numbers from 1)."""
    block, first = [], 0
    for n, line in enumerate(lines, 1):
        if line.strip():
            if not block:
                first = n
            block.append(line)
        elif block:
            yield first, block
            block = []
    if block:
        yield first, block


def parse_text(text: str, fmt: str) -> list[TextSegment]:
    """Parse subtitle text. fmt: "srt" or "vtt". Cues with no text are skipped; a file with
    no cues at all, or a block that is not a cue, raises BadSubtitles."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in ("srt", "vtt"):
        raise BadSubtitles(f"unsupported subtitle format {fmt!r}: upload .srt or .vtt.")
    if "\x00" in text:
        raise BadSubtitles("the subtitle file is binary, not text.")
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not any(l.strip() for l in lines):
        raise BadSubtitles("the subtitle file is empty.")
    blocks = list(_blocks(lines))
    if fmt == "vtt":
        header = lines[0]
        if not (header == "WEBVTT" or header.startswith(("WEBVTT ", "WEBVTT\t"))):
            raise BadSubtitles(f"line 1: a WebVTT file must start with 'WEBVTT', got {header.strip()[:40]!r}.")
        blocks = blocks[1:]  # the header block (WEBVTT + metadata lines)
    segments = []
    for first, block in blocks:
        if fmt == "vtt" and block[0].split(None, 1)[0] in ("NOTE", "STYLE", "REGION"):
            continue
        # An optional cue number (srt) / identifier (vtt) comes before the timing line.
        at = 1 if len(block) > 1 and "-->" not in block[0] and ("-->" in block[1] or block[0].strip().isdigit()) else 0
        if at and fmt == "srt" and not block[0].strip().isdigit():
            raise BadSubtitles(f"line {first}: expected a cue number, got {block[0].strip()[:60]!r}.")
        start, end = _timing(block[at], first + at, fmt)
        body = clean_text("\n".join(block[at + 1:]))
        if body:
            segments.append(TextSegment(start, end, body, "subtitle", 1.0))
    if not segments:
        raise BadSubtitles("the subtitle file has no cues with text.")
    return sorted(segments, key=lambda s: (s.t_start, s.t_end))


def parse_file(path: str | os.PathLike, name: str | None = None) -> list[TextSegment]:
    """Parse a .srt or .vtt file (format from the suffix; otherwise a file starting with
    'WEBVTT' is WebVTT, anything else SubRip). UTF-8 (BOM allowed), else Latin-1.
    name: what errors call the file (the user's file name, not where the server keeps it)."""
    path = Path(path)
    name = name or path.name
    if not path.is_file():
        raise BadSubtitles(f"the subtitle file {name} does not exist.")
    if path.stat().st_size > MAX_BYTES:
        raise BadSubtitles(f"the subtitle file {name} is over {MAX_BYTES // 2**20} MiB: not a subtitle file.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # old SubRip files are often Windows-1252/Latin-1
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("srt", "vtt"):
        fmt = "vtt" if text.lstrip("\ufeff").startswith("WEBVTT") else "srt"
    try:
        return parse_text(text, fmt)
    except BadSubtitles as exc:
        raise BadSubtitles(f"{name}: {exc}") from None


# ---------------------------------------------------------------- embedded streams

_TEXT_CODECS = {"mov_text", "subrip", "srt", "ass", "ssa", "webvtt", "text"}


def _text_stream(container):
    return next((s for s in container.streams.subtitles
                 if s.codec_context is not None and s.codec_context.name in _TEXT_CODECS), None)


def has_subtitle_stream(path: str | os.PathLike) -> bool:
    """Whether the file has a text subtitle stream we can read (bitmap subtitles, e.g.
    DVD/PGS, do not count: they would need OCR)."""
    try:
        with av.open(str(path)) as container:
            return _text_stream(container) is not None
    except av.error.FFmpegError:
        return False


def _event_text(sub) -> str:
    """Plain text of one decoded subtitle rect (ASS event from any text codec)."""
    dialogue = getattr(sub, "dialogue", None)
    if dialogue is None:
        ass = bytes(getattr(sub, "ass", b"") or b"").decode("utf-8", "replace")
        dialogue = ass.split(",", 8)[-1] if ass.count(",") >= 8 else (getattr(sub, "text", b"") or b"")
    if isinstance(dialogue, bytes):
        dialogue = dialogue.decode("utf-8", "replace")
    return clean_text(dialogue)


def embedded(path: str | os.PathLike) -> list[TextSegment]:
    """Cues of the first text subtitle stream, times relative to the video stream's start;
    [] when there is none."""
    with av.open(str(path)) as container:
        stream = _text_stream(container)
        if stream is None:
            return []
        video = container.streams.video[0] if container.streams.video else None
        v0 = float(video.start_time * video.time_base) if video is not None and video.start_time is not None else 0.0
        segments = []
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            start = float(packet.pts * packet.time_base) - v0
            end = start + float((packet.duration or 0) * packet.time_base)
            try:
                subs = packet.decode()
            except av.error.FFmpegError:
                continue  # one broken cue is not worth failing the ingest
            text = " ".join(t for t in (_event_text(s) for s in subs) if t)
            if text:
                segments.append(TextSegment(max(0.0, start), max(0.0, end), text, "subtitle", 1.0))
        return sorted(segments, key=lambda s: (s.t_start, s.t_end))
