"""Synthetic videos with known on-screen text and speech, for the text channel's tests and
benchmark.

    truth = make_text_video("game.mp4", minutes=2,
                            banners=[(10, 20, "GOAL MARTINEZ")],
                            speech=spread_speech(SENTENCES, start=5, gap=9))

Frames are drawn with PIL (DejaVu fonts): a scoreboard "HOME 2  AWAY 1" (top left) that
changes a few times, a game clock "07:12" (top right) counting down once per second, and
banners in big letters over their spans, over a smooth gradient. Speech is rendered by
espeak-ng (`VOICE`, the voice PocketSphinx understands best of those tried) and placed at
its times in one mono track, muxed as AAC. `write_srt` / `write_vtt` write subtitle files.

Same arguments -> the same frames, audio and truth (the encoded bytes may still differ).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .synth import pick_codec

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
# espeak-ng's Klatt-2 variant at 170 wpm: of the voices tried, PocketSphinx recognises it best
# (default voice: ~10% word recall; en-us+klatt -s 170: 75%; this: 81-82% on SENTENCES).
VOICE = ("-v", "en-us+klatt2", "-s", "170")
AUDIO_RATE = 22050  # espeak-ng's native rate; AAC takes it as is

# The fixed sentence set the ASR recall figure is measured on (ordinary everyday speech;
# never pruned for being recognised badly).
SENTENCES = (
    "the weather is nice today",
    "please close the door",
    "i would like a cup of coffee",
    "the train leaves at nine",
    "we are going to the park",
    "can you help me find my keys",
    "the children are playing outside",
    "turn left at the next street",
    "dinner will be ready soon",
    "i need to buy some milk",
    "the meeting starts in ten minutes",
    "she reads a book every night",
)


def spread_speech(sentences=SENTENCES, start: float = 5.0, gap: float = 9.0) -> list[tuple[float, str]]:
    """[(t seconds, sentence), ...]: one sentence every `gap` seconds from `start`."""
    return [(start + i * gap, s) for i, s in enumerate(sentences)]


# ---------------------------------------------------------------- subtitles


def _stamp(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def write_srt(path, cues) -> Path:
    """cues: [(t_start, t_end, text), ...] seconds -> a SubRip file (text may hold newlines)."""
    blocks = [f"{i}\n{_stamp(a, ',')} --> {_stamp(b, ',')}\n{text}\n" for i, (a, b, text) in enumerate(cues, 1)]
    Path(path).write_text("\n".join(blocks), encoding="utf-8")
    return Path(path)


def write_vtt(path, cues) -> Path:
    """cues: [(t_start, t_end, text), ...] seconds -> a WebVTT file."""
    blocks = [f"{_stamp(a, '.')} --> {_stamp(b, '.')}\n{text}\n" for a, b, text in cues]
    Path(path).write_text("WEBVTT\n\n" + "\n".join(blocks), encoding="utf-8")
    return Path(path)


# ---------------------------------------------------------------- speech


@lru_cache(maxsize=64)
def speak(sentence: str) -> np.ndarray:
    """espeak-ng's rendering of `sentence`: float32 [samples] at AUDIO_RATE, in [-1, 1]."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("make_text_video with speech needs espeak-ng: apt-get install espeak-ng")
    wav = subprocess.run(["espeak-ng", *VOICE, "--stdout", sentence], check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        if w.getframerate() != AUDIO_RATE or w.getsampwidth() != 2:
            raise RuntimeError(f"espeak-ng wrote {w.getframerate()} Hz / {8 * w.getsampwidth()}-bit audio")
        # espeak-ng's --stdout header has a bogus frame count (it streams): read all bytes.
        raw = wav[44:]
    return np.frombuffer(raw[: len(raw) // 2 * 2], "<i2").astype(np.float32) / 32768.0


def _voiced_span(samples: np.ndarray) -> tuple[float, float]:
    """(first, last) time in seconds with sound above -40 dBFS: the spoken part of a clip."""
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    if len(loud) == 0:
        return 0.0, 0.0
    return loud[0] / AUDIO_RATE, (loud[-1] + 1) / AUDIO_RATE


def _speech_track(speech, duration: float) -> tuple[np.ndarray, list[dict]]:
    track = np.zeros(int(np.ceil(duration * AUDIO_RATE)), np.float32)
    truth = []
    for t, sentence in sorted(speech):
        clip = speak(sentence)
        i = int(round(t * AUDIO_RATE))
        if i + len(clip) > len(track):
            raise ValueError(f"speech {sentence!r} at {t:.1f} s runs past the end of the video ({duration:.1f} s)")
        if truth and t < truth[-1]["t_clip_end"]:
            raise ValueError(f"speech {sentence!r} at {t:.1f} s overlaps the previous sentence")
        track[i:i + len(clip)] += clip
        a, b = _voiced_span(clip)
        words = sentence.split()
        # Word times: the voiced span split in proportion to letters (+1 for the gap):
        # approximate, good to a fraction of a second.
        weights = np.array([len(w) + 1 for w in words], np.float64)
        edges = t + a + (b - a) * np.concatenate([[0], np.cumsum(weights)]) / weights.sum()
        truth.append({"t_start": round(t + a, 3), "t_end": round(t + b, 3), "text": sentence,
                      "words": [[w, round(edges[k], 3), round(edges[k + 1], 3)] for k, w in enumerate(words)],
                      "t_clip_end": t + len(clip) / AUDIO_RATE})
    for d in truth:
        del d["t_clip_end"]
    return track, truth


# ---------------------------------------------------------------- frames


@lru_cache(maxsize=16)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_DIR / name), size)


def _background(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A smooth two-colour diagonal gradient (mid-dark, so light text reads on it)."""
    w, h = size
    c0, c1 = rng.integers(20, 90, 3), rng.integers(20, 90, 3)
    ramp = (np.add.outer(np.arange(h) / h, np.arange(w) / w) / 2)[..., None]
    return Image.fromarray((c0 * (1 - ramp) + c1 * ramp).astype(np.uint8))


def _scoreboard_schedule(duration: float, rng: np.random.Generator) -> list[dict]:
    """Score over time: a goal every ~duration/4 (at least 2 changes), at random times."""
    n_goals = max(2, int(duration // 90))
    times = np.sort(rng.uniform(0.1 * duration, 0.95 * duration, n_goals))
    home = away = 0
    spans, t0 = [], 0.0
    for t in list(times) + [duration]:
        spans.append({"t_start": round(t0, 3), "t_end": round(float(t), 3), "text": f"HOME {home}  AWAY {away}"})
        if rng.random() < 0.5:
            home += 1
        else:
            away += 1
        t0 = float(t)
    return spans


def clock_text(t: float, start_s: int) -> str:
    """The game clock at video time t: counts down from start_s, once per second, mm:ss."""
    left = max(0, start_s - int(np.floor(t + 1e-9)))
    return f"{left // 60:02d}:{left % 60:02d}"


def _render(bg: Image.Image, score: str | None, clock: str | None, banner: str | None) -> np.ndarray:
    img = bg.copy()
    d = ImageDraw.Draw(img)
    w, h = img.size
    small = _font("DejaVuSans-Bold.ttf", max(12, h // 15))
    if score:
        box = d.textbbox((0, 0), score, font=small)
        pad = h // 60 + 2
        d.rectangle([h // 40, h // 40, h // 40 + box[2] + 2 * pad, h // 40 + box[3] + 2 * pad], fill=(10, 10, 30))
        d.text((h // 40 + pad, h // 40 + pad), score, font=small, fill=(245, 245, 245))
    if clock:
        # Not DejaVu Sans Mono: Tesseract misreads its "11:" ("TV32") in ~4% of 2x crops.
        box = d.textbbox((0, 0), clock, font=small)
        d.text((w - box[2] - h // 20, h // 40 + h // 60 + 2), clock, font=small, fill=(255, 230, 80))
    if banner:
        big = _font("DejaVuSans-Bold.ttf", max(16, h // 9))
        box = d.textbbox((0, 0), banner, font=big)
        x, y = (w - box[2]) // 2, int(h * 0.62)
        pad = h // 40
        d.rectangle([x - 2 * pad, y - pad, x + box[2] + 2 * pad, y + box[3] + pad], fill=(235, 235, 235))
        d.text((x, y), banner, font=big, fill=(15, 15, 15))
    return np.asarray(img)


# ---------------------------------------------------------------- encoding


_X264 = {"preset": "veryfast", "crf": "20", "threads": "1", "tune": "stillimage"}


def make_text_video(path, minutes: float, *, banners=(), speech=(), scoreboard: bool = True,
                    clock: bool = True, size: tuple[int, int] = (640, 360), fps: float = 2.0,
                    seed: int = 0, clock_start: int | None = None) -> dict:
    """Render and encode the video; return its truth (JSON-able dict).

    banners: [(t_start, t_end, text)] seconds; speech: [(t, sentence)] (t = clip start; the
    truth has the voiced span and approximate word times). No speech -> no audio stream.
    Truth keys: duration, fps, size, banners, speech, scoreboard (spans), clock
    (start seconds, counting down once per second; None when off)."""
    path = Path(path)
    width, height = size
    if width % 2 or height % 2 or min(size) < 64:
        raise ValueError(f"size must be even and at least 64 px per side, got {width}x{height}")
    duration = float(minutes) * 60.0
    n_frames = int(round(duration * fps))
    if n_frames < 1:
        raise ValueError("the video must be at least one frame long")
    rng = np.random.default_rng(seed)
    bg = _background(size, rng)
    score_spans = _scoreboard_schedule(duration, rng) if scoreboard else []
    clock_s = (clock_start if clock_start is not None else int(rng.integers(5 * 60, 15 * 60))) if clock else None
    if clock_s is not None:
        clock_s = max(clock_s, int(np.ceil(duration)))  # never reaches 00:00 and freezes
    banner_spans = sorted((float(a), float(b), str(s)) for a, b, s in banners)
    track, speech_truth = _speech_track(speech, duration) if speech else (None, [])

    def state(t: float):
        score = next((s["text"] for s in score_spans if s["t_start"] <= t < s["t_end"]), None)
        banner = next((s for a, b, s in banner_spans if a <= t < b), None)
        return score, clock_text(t, clock_s) if clock_s is not None else None, banner

    rate = Fraction(fps).limit_denominator(1001)
    codec = pick_codec(path)
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=rate, options=dict(_X264) if codec == "libx264" else {})
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        aud = None
        if track is not None:
            aud = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        sent = 0  # audio samples encoded so far
        last_state, last_frame = None, None
        for i in range(n_frames):
            t = i / float(rate)
            st = state(t)
            if st != last_state:  # most frames repeat the previous one: draw only on change
                last_state, last_frame = st, _render(bg, *st)
            frame = av.VideoFrame.from_ndarray(last_frame, format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            out.mux(vs.encode(frame))
            if aud is not None:  # keep the audio in step with the video (interleaved file)
                upto = min(len(track), int(round((i + 1) / float(rate) * AUDIO_RATE)))
                sent = _encode_audio(out, aud, track, sent, upto)
        out.mux(vs.encode())
        if aud is not None:
            _encode_audio(out, aud, track, sent, len(track))
            out.mux(aud.encode())
    return {"path": path.name, "duration": n_frames / float(rate), "fps": float(rate), "size": [width, height],
            "seed": seed, "banners": [{"t_start": a, "t_end": b, "text": s} for a, b, s in banner_spans],
            "speech": speech_truth, "voice": " ".join(VOICE), "scoreboard": score_spans,
            "clock": None if clock_s is None else {"start": clock_s, "step_s": 1.0}}


def _encode_audio(out, stream, track: np.ndarray, start: int, stop: int, block: int = 1024) -> int:
    """Encode track[start:stop] in `block`-sample frames (AAC's frame size); returns the
    new position (a partial block is held back until the end)."""
    while stop - start >= block or (stop == len(track) and start < stop):
        n = min(block, stop - start)
        frame = av.AudioFrame.from_ndarray(track[None, start:start + n], format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = AUDIO_RATE, start, Fraction(1, AUDIO_RATE)
        out.mux(stream.encode(frame))
        start += n
    return start
