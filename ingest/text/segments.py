"""The text channel's data: time-stamped segments, the per-ingest options, and its errors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from videokv.errors import VideoKVError

SOURCES = ("ocr", "asr", "subtitle")


@dataclass
class TextSegment:
    """Text from one source over [t_start, t_end) seconds of the video.

    words: for speech, [(word, t_start, t_end), ...] so a segment that spans two chunks is
    split between them word by word; empty for OCR and subtitles (a segment is then shown
    in every chunk it overlaps).
    conf: the source's confidence in [0, 1] (OCR: mean word confidence; subtitles: 1).
    """

    t_start: float
    t_end: float
    text: str
    source: str
    conf: float = 1.0
    words: list[tuple[str, float, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["words"] = [list(w) for w in self.words]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TextSegment":
        return cls(**{**d, "words": [tuple(w) for w in d.get("words", [])]})


@dataclass(frozen=True)
class TextOptions:
    """Which channels run for one ingest, and their knobs.

    subtitles: use subtitles when there are any (the uploaded file, else the video's own
      subtitle stream); subtitle_file: an uploaded .srt/.vtt.
    ocr_min_conf: Tesseract word confidence (0-100) below which a word is dropped.
    max_tokens: cap on a chunk's text line, in tokens of the LLM's tokenizer.
    """

    ocr: bool = False
    asr: bool = False
    subtitles: bool = True
    subtitle_file: str | None = None
    ocr_min_conf: float = 60.0
    max_tokens: int = 48

    def active(self, has_embedded_subtitles: bool = False) -> bool:
        """Whether any channel can produce text for this video (else chunks are as without
        the text channel, and so are their KVs)."""
        subs = self.subtitles and (self.subtitle_file is not None or has_embedded_subtitles)
        return self.ocr or self.asr or subs

    def overridden(self, **override) -> "TextOptions":
        """These options with per-ingest overrides (CLI flags, API form fields); None keeps
        the default."""
        return replace(self, **{k: v for k, v in override.items() if v is not None})

    def identity(self, subtitle_sha256: str = "") -> str:
        """Everything the text (and so the chunk KVs) depends on besides the video bytes."""
        d = {"ocr": self.ocr, "asr": self.asr, "subtitles": self.subtitles, "subtitle_sha256": subtitle_sha256,
             "ocr_min_conf": self.ocr_min_conf, "max_tokens": self.max_tokens, "version": 1}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class ToolMissing(VideoKVError):
    """A channel was enabled but the program it runs is not installed. A 4xx: the request
    can succeed with the channel off, and retrying cannot help until someone installs it."""

    exit_code = 3
    http_status = 422
    code = "tool_missing"

    def __init__(self, channel: str, program: str, packages: str):
        self.channel, self.program, self.packages = channel, program, packages
        super().__init__(f"the {channel} channel needs `{program}`, which is not installed: "
                         f"apt-get install {packages} (or turn the {channel} channel off)")


class BadSubtitles(VideoKVError):
    """An uploaded subtitle file we cannot parse."""

    exit_code = 2
    http_status = 422
    code = "bad_subtitles"


def content_key(video_sha256: str, opts: TextOptions | None, has_embedded_subtitles: bool = False,
                tenant: str | None = None) -> str:
    """What a video's KVs are stored under (with the model fingerprint): the file's sha256
    when no text channel can add anything, else a hash over the file and everything the
    text depends on, so the same file ingested with other channels is another content.
    tenant: KVs are the tenant's own (the default): another tenant uploading the same bytes
    gets its own content, ingested for it, so nothing tells it that someone else has the
    file. None: contents are shared across tenants (VIDEOKV_SHARE_KV_ACROSS_TENANTS)."""
    key = video_sha256
    if opts is not None and opts.active(has_embedded_subtitles):
        sub = ""
        if opts.subtitle_file:
            sub = hashlib.sha256(open(opts.subtitle_file, "rb").read()).hexdigest()
        key = hashlib.sha256(f"{video_sha256}|text:{opts.identity(sub)}".encode()).hexdigest()
    if tenant is not None:
        key = hashlib.sha256(f"{key}|tenant:{tenant}".encode()).hexdigest()
    return key


SUBTITLE_SUFFIXES = (".srt", ".vtt")


def check_subtitle_file(path: str) -> None:
    """A subtitle file argument: exists and is .srt/.vtt (its content is parsed at ingest)."""
    from pathlib import Path
    p = Path(path)
    if not p.is_file():
        raise BadSubtitles(f"subtitle file {path} does not exist")
    if p.suffix.lower() not in SUBTITLE_SUFFIXES:
        raise BadSubtitles(f"subtitle file {p.name}: expected a .srt or .vtt file")
