"""The text channel: what a chunk *says* besides what it shows.

Three sources, each optional per ingest:
  - ``ocr``: on-screen text read by Tesseract from the sampled frames (`ocr.py`);
  - ``asr``: speech from the audio track, transcribed by PocketSphinx (`asr.py`);
  - ``subtitle``: an uploaded ``.srt``/``.vtt`` or the file's own subtitle stream (`subtitles.py`).

Each source yields time-stamped `TextSegment`s. `chunk_texts` aligns them to the chunk plan
and renders each chunk's line (engine.prefill.text_line), capped in tokens; the line goes
after the chunk's timestamp as dense TEXT tokens, so it survives both L-KV and H-KV.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

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

    def identity(self, subtitle_sha256: str = "") -> str:
        """Everything the text (and so the chunk KVs) depends on besides the video bytes."""
        d = {"ocr": self.ocr, "asr": self.asr, "subtitles": self.subtitles, "subtitle_sha256": subtitle_sha256,
             "ocr_min_conf": self.ocr_min_conf, "max_tokens": self.max_tokens, "version": 1}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class ToolMissing(VideoKVError):
    """A channel was enabled but the program it runs is not installed."""

    exit_code = 3
    http_status = 500

    def __init__(self, channel: str, program: str, packages: str):
        self.channel, self.program, self.packages = channel, program, packages
        super().__init__(f"the {channel} channel needs `{program}`, which is not installed: "
                         f"apt-get install {packages} (or turn the {channel} channel off)")


class BadSubtitles(VideoKVError):
    """An uploaded subtitle file we cannot parse."""

    exit_code = 2
    http_status = 422
