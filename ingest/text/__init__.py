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

from .segments import (  # noqa: F401
    SOURCES,
    SUBTITLE_SUFFIXES,
    BadSubtitles,
    TextOptions,
    TextSegment,
    ToolMissing,
    check_subtitle_file,
    content_key,
)


def check_tools(opts: TextOptions) -> None:
    """Raise ToolMissing for an enabled channel whose program (or model) is not installed:
    checked up front, so an upload is refused at once rather than failing in the worker."""
    from . import asr, ocr
    if opts.ocr:
        ocr.require()
    if opts.asr:
        asr.require()
