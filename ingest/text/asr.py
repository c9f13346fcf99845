"""Speech to text: the video's audio track through PocketSphinx (`pocketsphinx_continuous`).

    segs = transcribe("talk.mp4")   # one pass over the whole track, as a WAV file
    stream = SpeechStream("talk.mp4"); segs = stream.advance_to(60.0)   # what ingest runs
    # [TextSegment(source="asr", words=[(w, t0, t1), ...])]

The audio is decoded with PyAV to 16 kHz mono 16-bit samples (the acoustic model's format)
and the program's `-time yes` output is parsed: one segment per utterance, word times in
seconds of the video (the audio stream's own start offset added).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
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
    if shutil.which("stdbuf") is None:                  # SpeechStream runs the program under it
        raise ToolMissing("speech", "stdbuf", "coreutils")


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
        v_start = _video_start(container)
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


def _video_start(container) -> float:
    """The video stream's start time in seconds (0 without one): audio times are relative to it."""
    video = container.streams.video[0] if container.streams.video else None
    return float(video.start_time * video.time_base) if video is not None and video.start_time is not None else 0.0


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


class SpeechStream:
    """Speech recognised as the video streams: one `pocketsphinx_continuous` reads the audio
    track from a pipe while the ingest moves through the chunks, so it hears each sentence
    after the speech before it, as a pass over the whole track does (the same words: tested),
    wherever the ingest asks; memory is a pipe's worth of audio whatever the length.

    The recogniser prints an utterance when it ends, opening it with a "<s>" line at its
    start time: once a "<s>" at or after `t` is out (or the track is done), every utterance
    that began before `t` is complete.

    start_s: the time from which speech is wanted (a resumed ingest: where it resumes): the
    utterances that end after it, whole. The recogniser still hears the track from its
    start, so a resumed ingest gets the utterances an uninterrupted one gets, word for word
    and time for time (what it hears depends on what it heard before: its live cepstral
    mean and noise floor); that costs ~1 s per 2 minutes of audio before start_s. An
    utterance over the resume point was stored before too: the transcript keeps one."""

    def __init__(self, path: str | os.PathLike, start_s: float = 0.0, options: tuple[str, ...] = DECODER_OPTIONS):
        require()
        self.start = start_s
        self._container = av.open(str(path))
        self._frames = self._container.decode(self._container.streams.audio[0])
        self._v0 = _video_start(self._container)
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        self._t_next: float | None = None     # video time of the next sample decoded
        self._offset: float | None = None     # video time of the first sample
        self._audio_done = False
        self._errors = tempfile.TemporaryFile(prefix="videokv-asr-")      # the recogniser's stderr
        # stdbuf -oL: the recogniser's lines reach us as it prints them, not per 4 KiB
        self._proc = subprocess.Popen(
            ["stdbuf", "-oL", PROGRAM, "-infile", "/dev/stdin", "-time", "yes", "-logfn", os.devnull, *options],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errors)
        self._heard = threading.Condition()
        self._lines: list[str] = []           # printed, not yet handed out
        self._last_start = -1.0               # time (of the fed audio) of the latest "<s>"
        self._printed_all = False
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="videokv-asr-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self._proc.stdout:
            line = raw.decode(errors="replace")
            parts = line.split()
            with self._heard:
                self._lines.append(line)
                if len(parts) == 4 and parts[0] == "<s>":
                    self._last_start = float(parts[1])
                    self._heard.notify_all()
        with self._heard:
            self._printed_all = True
            self._heard.notify_all()

    def _feed(self) -> bool:
        """Decode the next audio frame and write it to the recogniser; False once the track
        is done (its input then closed)."""
        frame = next(self._frames, None)
        if frame is not None and self._t_next is None and frame.pts is not None:
            self._t_next = float(frame.pts * frame.time_base) - self._v0
        for res in self._resampler.resample(frame):
            samples = res.to_ndarray().reshape(-1).astype("<i2")
            t = self._t_next or 0.0
            self._t_next = t + len(samples) / RATE
            if self._offset is None:
                self._offset = t
            try:
                self._proc.stdin.write(samples.tobytes())
            except BrokenPipeError:
                break  # the recogniser died: its exit status says why (in advance_to)
        if frame is None:
            self._audio_done = True
            self._proc.stdin.close()
        return not self._audio_done

    def advance_to(self, t: float) -> list[TextSegment]:
        """Every utterance that began before `t` seconds and was not handed out yet (and any
        later one already printed); those that end before `start` left out."""
        while True:
            with self._heard:
                heard_past = self._offset is not None and self._last_start + self._offset >= t
                if heard_past or self._printed_all:
                    break
                if self._audio_done:
                    self._heard.wait()
                    continue
            self._feed()
        with self._heard:
            if self._printed_all:
                ready, self._lines = self._lines, []
            else:             # the last "<s>" opens an utterance that may still be printing
                # (none yet: the audio starts after t, so nothing began before it)
                cut = max((i for i, line in enumerate(self._lines) if line.startswith("<s> ")), default=0)
                ready, self._lines = self._lines[:cut], self._lines[cut:]
        if self._printed_all:
            self._check_exit()
        return [s for s in parse_output("".join(ready), self._offset or 0.0) if s.t_end > self.start]

    def _check_exit(self) -> None:
        code = self._proc.wait()
        if code != 0:
            self._errors.seek(0)
            tail = self._errors.read().decode(errors="replace").strip()[-300:]
            raise RuntimeError(f"{PROGRAM} failed (exit {code}): {tail}")

    def close(self) -> None:
        """Stop the recogniser (if still running) and release its files."""
        if self._closed:
            return
        self._closed = True
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            try:
                pipe.close()
            except (OSError, ValueError):
                pass
        self._reader.join(timeout=5)
        self._errors.close()
        self._container.close()
