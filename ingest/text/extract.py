"""Run the enabled text channels on one video.

    segments, report = extract_segments(path, info, TextOptions(ocr=True, asr=True), fps=1.0, max_frames=10_000)
    lines = chunk_texts(segments, spans, opts.max_tokens, count_tokens)

report: per channel ("ocr", "asr", "subtitle") {"ran": bool, "segments": n, "seconds": wall,
"tool": identity string, "note": why it did not run / what it did}; OCR adds "stats".
Every enabled channel's program is checked before any work starts, so a missing tool fails
the ingest at once (ToolMissing), not after minutes of OCR.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import av

from videokv.ingest.video import VideoInfo, iter_frames, sample_targets

from . import asr as asr_mod
from . import ocr as ocr_mod
from . import subtitles as subs_mod
from .segments import TextOptions, TextSegment

Progress = Callable[[str, int, int], None]


def _ocr_size(info: VideoInfo, max_side: int) -> tuple[int, int] | None:
    """(W, H) to decode at: native, or scaled down (even sides) so the longer is max_side."""
    if max(info.width, info.height) <= max_side:
        return None
    scale = max_side / max(info.width, info.height)
    return max(16, round(info.width * scale / 2) * 2), max(16, round(info.height * scale / 2) * 2)


def _entry(ran=False, segments=0, seconds=0.0, tool="", note="") -> dict:
    return {"ran": ran, "segments": segments, "seconds": round(seconds, 3), "tool": tool, "note": note}


def extract_segments(path: str | os.PathLike, info: VideoInfo, opts: TextOptions, fps: float, max_frames: int,
                     progress: Progress | None = None, ocr_max_side: int = 1280) -> tuple[list[TextSegment], dict]:
    """Segments from every enabled channel (time order) and the per-channel report.

    fps, max_frames: the pipeline's sampling, so OCR reads the frames the model sees (at
    native resolution, longer side capped at `ocr_max_side`).
    progress(stage, done, total): stage "ocr" counts frames; "asr" and "subtitle" report
    0/1 then 1/1."""
    report = {"ocr": _entry(note="off"), "asr": _entry(note="off"), "subtitle": _entry(note="off")}
    # Fail fast on a missing program, before any decoding.
    tools = {}
    if opts.ocr:
        tools["ocr"] = ocr_mod.tesseract_version()
    if opts.asr:
        tools["asr"] = asr_mod.pocketsphinx_version()
    segments: list[TextSegment] = []

    if opts.ocr:
        t0 = time.perf_counter()
        total = len(sample_targets(info.duration, fps, max_frames))
        stats: dict = {}

        def batches():
            done = 0
            if progress:
                progress("ocr", 0, total)
            for batch in iter_frames(path, fps, max_frames, size=_ocr_size(info, ocr_max_side), info=info):
                yield batch
                done += len(batch)
                if progress:
                    progress("ocr", min(done, total), total)

        found = ocr_mod.read_frames(batches(), min_conf=opts.ocr_min_conf, max_side=ocr_max_side, stats=stats)
        segments += found
        report["ocr"] = _entry(True, len(found), time.perf_counter() - t0, tools["ocr"],
                               f"read {stats['full']} of {stats['frames']} frames whole, {stats['crops']} changed "
                               f"regions, {stats['unchanged']} frames unchanged")
        report["ocr"]["stats"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}

    if opts.asr:
        t0 = time.perf_counter()
        if progress:
            progress("asr", 0, 1)
        if not info.has_audio:
            report["asr"] = _entry(False, 0, 0.0, tools["asr"], "no audio track")
        else:
            found = asr_mod.transcribe(path, info)
            segments += found
            words = sum(len(s.words) for s in found)
            report["asr"] = _entry(True, len(found), time.perf_counter() - t0, tools["asr"],
                                   f"{words} words" if found else "no speech recognised")
        if progress:
            progress("asr", 1, 1)

    if opts.subtitles:  # off means neither the uploaded file nor the embedded stream (TextOptions.active)
        t0 = time.perf_counter()
        if progress:
            progress("subtitle", 0, 1)
        if opts.subtitle_file:
            found = subs_mod.parse_file(opts.subtitle_file)
            report["subtitle"] = _entry(True, len(found), time.perf_counter() - t0, "videokv srt/vtt parser",
                                        f"uploaded {os.path.basename(opts.subtitle_file)}")
        elif subs_mod.has_subtitle_stream(path):
            found = subs_mod.embedded(path)
            report["subtitle"] = _entry(True, len(found), time.perf_counter() - t0, f"PyAV {av.__version__}",
                                        "the video's subtitle stream")
        else:
            found = []
            report["subtitle"] = _entry(False, 0, time.perf_counter() - t0, "", "no subtitles")
        segments += found
        if progress:
            progress("subtitle", 1, 1)

    segments.sort(key=lambda s: (s.t_start, s.t_end))
    return segments, report
