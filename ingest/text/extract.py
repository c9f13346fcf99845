"""Run the enabled text channels on one video without the model: the streaming text channel
(`stream.TextStream`, what ingest runs chunk by chunk) driven over the sampled frames alone.

    segments, report = extract_segments(path, info, TextOptions(ocr=True, asr=True), fps=1.0)

report: per channel ("ocr", "asr", "subtitle") {"ran": bool, "segments": n, "seconds": wall,
"tool": identity string, "note": why it did not run / what it did}; OCR adds "stats".
Every enabled channel's program is checked before any work starts, so a missing tool fails
at once (ToolMissing), not after minutes of OCR.
"""

from __future__ import annotations

import os

from videokv.ingest.sampling import iter_frames
from videokv.ingest.video import VideoInfo

from . import asr as asr_mod
from . import ocr as ocr_mod
from .segments import TextOptions, TextSegment
from .stream import TextStream
from .subtitles import has_subtitle_stream


def extract_segments(path: str | os.PathLike, info: VideoInfo, opts: TextOptions, fps: float,
                     max_frames: int | None = None) -> tuple[list[TextSegment], dict]:
    """Segments from every enabled channel (time order) and the per-channel report.

    fps, max_frames: the sampling, so OCR reads the frames the model would see (at native
    resolution, the longer side capped at ocr.OCR_MAX_SIDE)."""
    if opts.ocr:
        ocr_mod.require()
    if opts.asr and info.has_audio:
        asr_mod.require()
    embedded = opts.subtitles and opts.subtitle_file is None and has_subtitle_stream(path)
    text = TextStream(path, info.has_audio, opts, lambda line: len(line.split()), 0.0, (), embedded)
    found: list[TextSegment] = []
    if opts.ocr:
        step = 1.0 / fps
        for batch in iter_frames(path, fps, max_frames, size=ocr_mod.ocr_size(info.width, info.height), info=info):
            end = min(float(batch.timestamps[-1]) + step, max(info.duration, float(batch.timestamps[-1])))
            text.line(float(batch.timestamps[0]), end, batch.frames, batch.timestamps)
            found += text.take_final()
    text.line(0.0, max(info.duration, 0.0))
    rest, report = text.finish()
    return sorted(found + rest, key=lambda s: (s.t_start, s.t_end)), report
