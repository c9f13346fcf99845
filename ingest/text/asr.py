"""Speech to text: the video's audio track through PocketSphinx (`pocketsphinx_continuous`).

    segs = transcribe("talk.mp4")   # [TextSegment(source="asr", words=[(w, t0, t1), ...])]

The audio is decoded with PyAV to 16 kHz mono 16-bit WAV (the acoustic model's format) in
a temporary directory, and the program's `-time yes` output is parsed: one segment per
utterance, word times in seconds of the video (the audio stream's own start offset added).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import av
import numpy as np

from .segments import TextSegment, ToolMissing

PROGRAM = "pocketsphinx_continuous"
PACKAGES = "pocketsphinx pocketsphinx-en-us"
MODEL_DIR = Path("/usr/share/pocketsphinx/model/en-us")
RATE = 16000
# Wider beams than the defaults (1e-48 / 1e-48 / 7e-29): on the tests' sentence set, over
# six espeak-ng voices, never worse and up to +6 points of word recall, for ~1.7x the time.
DECODER_OPTIONS = ("-beam", "1e-60", "-pbeam", "1e-60", "-wbeam", "1e-40")
# Tokens that are not words: sentence/silence markers and noise/filler classes.
_NOT_WORDS = re.compile(r"^(<s>|</s>|<sil>|\[[A-Z_]+\]|\+\+?[A-Z_]+\+\+?)$")
_ALTERNATE = re.compile(r"\(\d+\)$")  # "read(2)": the 2nd pronunciation of "read"


def require() -> None:
    """ToolMissing unless the recogniser and its en-us model are installed."""
    if shutil.which(PROGRAM) is None or not (MODEL_DIR / "en-us").is_dir():
        raise ToolMissing("speech", PROGRAM, PACKAGES)


def pocketsphinx_version() -> str:
    """Identity of the recogniser: program, package version, model and options."""
    require()
    version = "unknown"
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "pocketsphinx"], capture_output=True,
                             text=True, timeout=10)
        version = out.stdout.strip() or version
    except (OSError, subprocess.SubprocessError):
        pass  # not a Debian system: the model and options still identify the run
    return f"{PROGRAM} {version} (en-us, {' '.join(DECODER_OPTIONS)})"


def decode_audio(path: str | os.PathLike, wav_path: str | os.PathLike) -> float | None:
    """Write the first audio stream of `path` as 16 kHz mono s16 WAV to `wav_path`.

    Returns the time (seconds) of the audio's first sample relative to the video stream's
    start, or None when the file has no audio stream (nothing is written)."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        video = container.streams.video[0] if container.streams.video else None
        v_start = float(video.start_time * video.time_base) if video is not None and video.start_time is not None else 0.0
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        first = None
        with wave.open(str(wav_path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(RATE)
            for frame in container.decode(stream):
                if first is None and frame.pts is not None:
                    first = float(frame.pts * frame.time_base)
                for res in resampler.resample(frame):
                    out.writeframes(res.to_ndarray().astype("<i2").tobytes())
            for res in resampler.resample(None):
                out.writeframes(res.to_ndarray().astype("<i2").tobytes())
        a_start = first if first is not None else (
            float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0)
        return a_start - v_start


def parse_output(text: str, offset: float = 0.0) -> list[TextSegment]:
    """Parse `pocketsphinx_continuous -time yes` stdout into segments.

    Per utterance it prints the hypothesis on one line, then one line per token:
    "word start end posterior" (seconds of the input). A token line starting with "<s>"
    opens an utterance; "</s>" closes it."""
    segments: list[TextSegment] = []
    words: list[tuple[str, float, float]] = []
    probs: list[float] = []

    def close():
        if words:
            segments.append(TextSegment(words[0][1], words[-1][2], " ".join(w for w, _, _ in words), "asr",
                                        conf=float(np.mean(probs)), words=list(words)))
        words.clear()
        probs.clear()

    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue  # the hypothesis line (or anything else): the token lines carry it all
        token, t0, t1, p = parts
        try:
            t0, t1, p = float(t0), float(t1), float(p)
        except ValueError:
            continue  # a 4-word hypothesis line
        if token == "<s>":
            close()
            continue
        if token == "</s>":
            close()
            continue
        token = _ALTERNATE.sub("", token)
        if _NOT_WORDS.match(token):
            continue
        words.append((token.lower(), round(t0 + offset, 3), round(t1 + offset, 3)))
        probs.append(p)
    close()
    return segments


def transcribe(path: str | os.PathLike, info=None, options: tuple[str, ...] = DECODER_OPTIONS) -> list[TextSegment]:
    """Speech segments of the video at `path`; [] when it has no audio stream.

    info: the video's VideoInfo (unused beyond saving a probe; accepted for symmetry).
    Raises ToolMissing when pocketsphinx or its English model is not installed."""
    require()
    if info is not None and not info.has_audio:
        return []
    with tempfile.TemporaryDirectory(prefix="videokv-asr-") as tmp:
        wav = Path(tmp) / "audio.wav"
        offset = decode_audio(path, wav)
        if offset is None:
            return []
        with wave.open(str(wav)) as w:
            if w.getnframes() < RATE // 10:
                return []  # under 0.1 s: nothing to recognise
        return _pocketsphinx(wav, offset, options)


def _recognise(samples: np.ndarray, offset: float, workdir: Path, options: tuple[str, ...]) -> list[TextSegment]:
    """PocketSphinx over int16 mono samples at RATE; times + `offset` seconds."""
    if len(samples) < RATE // 10:
        return []                                   # under 0.1 s: nothing to recognise
    wav = workdir / "window.wav"
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(samples.astype("<i2").tobytes())
    return _pocketsphinx(wav, offset, options)


def _pocketsphinx(wav: Path, offset: float, options: tuple[str, ...]) -> list[TextSegment]:
    """PocketSphinx over a WAV file; segment times + `offset` seconds."""
    cmd = [PROGRAM, "-infile", str(wav), "-time", "yes", "-logfn", os.devnull, *options]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ToolMissing("speech", PROGRAM, PACKAGES) from None
    if done.returncode != 0:
        raise RuntimeError(f"{PROGRAM} failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    return parse_output(done.stdout, offset)


def _quietest(samples: np.ndarray, lo: int, hi: int, win: int = RATE // 10) -> int:
    """The sample index in [lo, hi) at the centre of the quietest `win`-long stretch: where
    a window is cut, so no word is split in two."""
    if hi - lo <= win:
        return hi
    x = samples[lo:hi].astype(np.float32) ** 2
    energy = np.convolve(x, np.ones(win, np.float32), mode="valid")
    return lo + int(np.argmin(energy)) + win // 2


class SpeechStream:
    """Speech recognised in windows, ahead of the chunks that need it: the audio is decoded
    as it is reached and recognised `window_s` seconds at a time, each window cut at its
    quietest tenth of a second near the end, so memory stays one window whatever the
    length of the video (a 10-hour track is 1.2 GB as one WAV).

    start_s: the time from which speech is wanted (a resumed ingest: where it resumes)."""

    def __init__(self, path: str | os.PathLike, start_s: float = 0.0, window_s: float = 120.0,
                 options: tuple[str, ...] = DECODER_OPTIONS):
        require()
        self.options, self.window = options, int(window_s * RATE)
        self._tmp = tempfile.TemporaryDirectory(prefix="videokv-asr-")
        self._container = av.open(str(path))
        self._stream = self._container.streams.audio[0]
        video = self._container.streams.video[0] if self._container.streams.video else None
        self._v0 = float(video.start_time * video.time_base) if video is not None and video.start_time is not None else 0.0
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        self._frames = self._container.decode(self._stream)
        self._buf = np.zeros(0, np.int16)
        self._t0: float | None = None       # video time of _buf[0]
        self._eof = False
        self.covered = start_s              # speech before this time is recognised (or not wanted)
        self.start = start_s

    def _decode_until(self, samples: int) -> None:
        chunks = [self._buf]
        have = len(self._buf)
        while have < samples and not self._eof:
            frame = next(self._frames, None)
            outs = self._resampler.resample(frame)
            if frame is None:
                self._eof = True
            elif self._t0 is None and frame.pts is not None:
                self._t0 = float(frame.pts * frame.time_base) - self._v0
            for res in outs:
                a = res.to_ndarray().reshape(-1).astype(np.int16)
                chunks.append(a)
                have += len(a)
        self._buf = np.concatenate(chunks)
        if self._t0 is None:
            self._t0 = 0.0

    def advance_to(self, t: float) -> list[TextSegment]:
        """Recognise the audio up to at least `t` seconds (more: whole windows); the new
        segments, words before `start` left out."""
        out: list[TextSegment] = []
        while self.covered < t and not (self._eof and len(self._buf) == 0):
            self._decode_until(self.window + RATE * 10)
            if self._t0 + len(self._buf) / RATE <= self.start:          # before a resume point: skip
                self._t0 += len(self._buf) / RATE
                self._buf = self._buf[:0]
                self.covered = max(self.covered, self._t0)
                continue
            cut = len(self._buf) if self._eof and len(self._buf) <= self.window + RATE * 10 else \
                _quietest(self._buf, max(0, self.window - RATE * 10), min(len(self._buf), self.window + RATE * 10))
            segs = _recognise(self._buf[:cut], self._t0, Path(self._tmp.name), self.options)
            out += [s for s in (_from(s, self.start) for s in segs) if s is not None]
            self._t0 += cut / RATE
            self._buf = self._buf[cut:]
            self.covered = self._t0 if not (self._eof and len(self._buf) == 0) else float("inf")
        return out

    def close(self) -> None:
        self._container.close()
        self._tmp.cleanup()


def _from(seg: TextSegment, start: float) -> TextSegment | None:
    """The segment's words at or after `start` (a resumed ingest has the earlier ones)."""
    if seg.t_start >= start:
        return seg
    words = [w for w in seg.words if (w[1] + w[2]) / 2 >= start]
    if not words:
        return None
    return TextSegment(words[0][1], words[-1][2], " ".join(w for w, _, _ in words), "asr", seg.conf, words)
