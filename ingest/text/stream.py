"""The text channel of one ingest, as its chunks pass: on-screen text is read from each
chunk's frames (decoded once, with the model's), speech is recognised by one recogniser
that hears the audio track as it streams (a little ahead of the chunks), subtitles are read
at the start (at most 4 MiB). Each chunk gets its line; segments become final as they close
(`take_final`, stored with the chunk group that closes them) and those still open are
checkpointed (`open_segments`), so a resumed ingest continues them. Memory: the segments
that can still touch a coming chunk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import av

from . import asr as asr_mod
from . import ocr as ocr_mod
from . import subtitles as subs_mod
from .align import chunk_texts
from .segments import TextOptions, TextSegment

Progress = Callable[[str, int, int], None]


def _entry(ran=False, segments=0, seconds=0.0, tool="", note="") -> dict:
    return {"ran": ran, "segments": segments, "seconds": round(seconds, 3), "tool": tool, "note": note}


class TextStream:
    """path/has_audio: the video; opts: which channels; start_s: where the ingest starts (a
    resumed one: its first chunk still to do); carried: segments still open at the last
    commit before the resume; count_tokens/max_tokens: the line's budget (align.chunk_texts)."""

    def __init__(self, path: str | os.PathLike, has_audio: bool, opts: TextOptions, count_tokens: Callable[[str], int],
                 start_s: float = 0.0, carried: Sequence[TextSegment] = (), embedded_subtitles: bool = False):
        self.opts, self.count_tokens = opts, count_tokens
        self.report = {"ocr": _entry(note="off"), "asr": _entry(note="off"), "subtitle": _entry(note="off")}
        self._seconds = {"ocr": 0.0, "asr": 0.0}
        self._counts = {"ocr": 0, "asr": 0, "subtitle": 0}
        self.ocr = ocr_mod.OcrStream(opts.ocr_min_conf) if opts.ocr else None
        self.asr = None
        if opts.asr:
            if has_audio:
                self.asr = asr_mod.SpeechStream(path, start_s)
                self.report["asr"]["tool"] = asr_mod.pocketsphinx_version()
            else:
                self.report["asr"] = _entry(False, 0, 0.0, asr_mod.pocketsphinx_version(), "no audio track")
        if self.ocr is not None:
            self.report["ocr"]["tool"] = ocr_mod.tesseract_version()
        subs = self._subtitles(path, embedded_subtitles)
        # A resumed ingest stored the cues that started before its first chunk: those still
        # showing are needed for lines only, not stored again.
        self._subs = [s for s in subs if s.t_start >= start_s]
        self._next_sub = 0
        self._live: list[TextSegment] = list(carried) + [s for s in subs if s.t_start < start_s < s.t_end]
        self._final: list[TextSegment] = list(carried)     # final, not yet handed to a commit

    def _subtitles(self, path, embedded: bool) -> list[TextSegment]:
        if not self.opts.subtitles:
            return []
        t0 = time.perf_counter()
        if self.opts.subtitle_file:
            found = subs_mod.parse_file(self.opts.subtitle_file)
            self.report["subtitle"] = _entry(True, len(found), time.perf_counter() - t0, "videokv srt/vtt parser",
                                             f"uploaded {os.path.basename(self.opts.subtitle_file)}")
        elif embedded:
            found = subs_mod.embedded(path)
            self.report["subtitle"] = _entry(True, len(found), time.perf_counter() - t0, f"PyAV {av.__version__}",
                                             "the video's subtitle stream")
        else:
            found = []
            self.report["subtitle"] = _entry(False, 0, time.perf_counter() - t0, "", "no subtitles")
        return sorted(found, key=lambda s: (s.t_start, s.t_end))

    def line(self, t0: float, t1: float, extra_frames=None, times=None) -> str:
        """The chunk [t0, t1)'s text line, after reading its frames (`extra_frames` at the OCR
        size, with their `times`) and recognising speech up to t1."""
        if self.ocr is not None and extra_frames is not None and len(extra_frames):
            c = time.perf_counter()
            self.ocr.add(extra_frames, times, t1)
            closed = self.ocr.take_closed()
            self._final += closed
            self._live += closed
            self._seconds["ocr"] += time.perf_counter() - c
        if self.asr is not None:
            c = time.perf_counter()
            said = self.asr.advance_to(t1 + 1.0)
            self._final += said
            self._live += said
            self._seconds["asr"] += time.perf_counter() - c
        while self._next_sub < len(self._subs) and self._subs[self._next_sub].t_start < t1 + 1e-9:
            s = self._subs[self._next_sub]
            self._next_sub += 1
            self._final.append(s)
            self._live.append(s)
        candidates = self._live + (self.ocr.open_now() if self.ocr is not None else [])
        line = chunk_texts(candidates, [(t0, t1)], self.opts.max_tokens, self.count_tokens)[0]
        # what ends by t1 can touch no later chunk (a zero-length mark at t1 belongs to the next)
        self._live = [s for s in self._live if s.t_end > t1 or s.t_start == s.t_end == t1]
        return line

    def take_final(self) -> list[TextSegment]:
        """Segments that became final since the last call (for the group commit)."""
        out, self._final = self._final, []
        for s in out:
            self._counts[s.source] = self._counts.get(s.source, 0) + 1
        return out

    def open_segments(self) -> list[TextSegment]:
        """Segments still open (on screen now): the commit's checkpoint."""
        return self.ocr.open_now() if self.ocr is not None else []

    def close(self) -> None:
        """Stop the speech recogniser (an ingest that fails or is stopped midway)."""
        if self.asr is not None:
            self.asr.close()

    def finish(self) -> tuple[list[TextSegment], dict]:
        """(the segments not yet handed over, all now final; the per-channel report)."""
        if self.asr is not None:
            c = time.perf_counter()
            self._final += self.asr.advance_to(float("inf"))
            self._seconds["asr"] += time.perf_counter() - c
            self.asr.close()
        if self.ocr is not None:
            self._final += self.ocr.finish()
        rest = self.take_final()
        if self.ocr is not None:
            st = self.ocr.stats
            self.report["ocr"] = {**_entry(True, self._counts["ocr"], self._seconds["ocr"], self.report["ocr"]["tool"],
                                           f"read {st['full']} of {st['frames']} frames whole, {st['crops']} changed "
                                           f"regions, {st['unchanged']} frames unchanged"),
                                  "stats": {k: round(v, 3) if isinstance(v, float) else v for k, v in st.items()}}
        if self.asr is not None:
            words = self._counts["asr"]
            self.report["asr"] = _entry(True, words, self._seconds["asr"], self.report["asr"]["tool"],
                                        f"{words} utterances" if words else "no speech recognised")
        return rest, self.report
