"""Render a toy-world video and its ground truth (events, questions); the command is
`videokv synth --minutes 3 --events 8 --seed 0 demo.mp4` (writes demo.mp4 + demo.json).

    truth = render_video("demo.mp4", minutes=3, events=8, seed=0)   # -> GroundTruth
    frame = frame_at(truth, 12.5)                                   # uint8 [H, W, 3]
    frame, labels = toyworld.random_scene(rng)                      # training frames

Same seed and parameters -> identical rendered frames and JSON (the noise of frame i is
seeded by (seed, i)). The encoded file is usually but not always byte-identical:
libx264 via PyAV 18 occasionally produces a different bitstream for the same frames
(seen even single-threaded), so compare frames, not file hashes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from . import render as tw
from . import scenario

DEFAULT_FPS = 4.0
DEFAULT_SIZE = (320, 240)
GENERATOR_VERSION = 1


@dataclass
class GroundTruth:
    """What was drawn, and the questions it answers. JSON: `to_dict()` / `load()`."""

    version: int
    seed: int
    n_events: int
    video: dict  # path, container, codec, width, height, fps, n_frames, duration
    scene: dict  # background, blur, noise, distractors
    events: list[dict]
    questions: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GroundTruth":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "GroundTruth":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def world(self) -> scenario.World:
        v = self.video
        return scenario.cached_world(self.seed, v["n_frames"], self.n_events, v["fps"], (v["width"], v["height"]))


def frame_at(truth: GroundTruth, t: float, with_labels: bool = False):
    """The exact (pre-encoding) frame shown at time t: frame floor(t * fps), uint8
    [H, W, 3]; with_labels also returns the visible objects with bboxes."""
    world = truth.world()
    i = min(max(int(np.floor(t * world.fps + 1e-9)), 0), world.n_frames - 1)
    return world.render(i, with_labels=with_labels)


def pick_codec(path: Path, codec: str | None = None) -> str:
    """Encoder for the file's extension: H.264 (libx264) for mp4/mkv/mov, else MPEG-4
    part 2; VP9 then VP8 for webm."""
    if codec:
        return codec
    wanted = ("libvpx-vp9", "libvpx") if path.suffix.lower() == ".webm" else ("libx264", "mpeg4")
    for name in wanted:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # UnknownCodecError: not in this FFmpeg build
            continue
    raise RuntimeError(f"no encoder available for {path.suffix} (tried {', '.join(wanted)})")


# Quality settings: near-transparent at these tiny sizes so pixel checks hold, and
# single-threaded so the bitstream does not depend on scheduling.
_ENCODER_OPTIONS = {
    "libx264": {"preset": "veryfast", "crf": "18", "threads": "1"},
    "mpeg4": {"qscale": "3", "threads": "1"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0", "threads": "1"},
    "libvpx": {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "2M", "threads": "1"},
}


def encode_video(path: str | Path, frames, fps: float, size: tuple[int, int], codec: str | None = None) -> str:
    """Encode an iterable of uint8 [H, W, 3] RGB frames; frame i gets pts i at time
    base 1/fps (constant frame rate). Returns the encoder name used."""
    path = Path(path)
    codec = pick_codec(path, codec)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        # A copy: PyAV consumes the options it applies from the dict it is given.
        stream = container.add_stream(codec, rate=rate, options=dict(_ENCODER_OPTIONS.get(codec, {})))
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if codec == "mpeg4":
            stream.codec_context.qscale = 3  # the "qscale" option alone is ignored
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return codec


def render_video(
    out_path: str | Path,
    minutes: float,
    events: int,
    seed: int,
    fps: float = DEFAULT_FPS,
    size: tuple[int, int] = DEFAULT_SIZE,
    truth_path: str | Path | None = None,
    codec: str | None = None,
    chunk_seconds: float = 16.0,
) -> GroundTruth:
    """Render and encode a toy-world video of `minutes` with `events` needles; write
    the ground-truth JSON to `truth_path` (default: out_path with .json) and return it.
    chunk_seconds: the ingest's chunk length (chunk frames / sampling rate; the default's
    16 frames at 1 fps), the tolerance of temporal answers (TOYWORLD.md)."""
    out_path = Path(out_path)
    width, height = size
    if width % 2 or height % 2 or min(size) < 64 or max(size) > 1920:
        raise ValueError(f"size must be even and 64..1920 px per side, got {width}x{height}")
    if not 1 <= fps <= 60:
        raise ValueError(f"fps must be 1..60, got {fps}")
    n_frames = int(round(minutes * 60 * fps))
    if n_frames < 1:
        raise ValueError("the video must be at least one frame long")
    world = scenario.cached_world(int(seed), n_frames, int(events), float(fps), (width, height))
    used = encode_video(out_path, (world.render(i) for i in range(n_frames)), fps, size, codec)
    questions = scenario.make_questions(world, np.random.default_rng([int(seed), 1]), chunk_seconds)
    truth = GroundTruth(
        version=GENERATOR_VERSION, seed=int(seed), n_events=int(events),
        video={"path": out_path.name, "container": out_path.suffix.lstrip(".").lower(), "codec": used,
               "width": width, "height": height, "fps": float(fps), "n_frames": n_frames,
               "duration": n_frames / fps},
        scene={"background": world.background.to_dict(), "blur": world.blur, "noise": world.noise,
               "distractors": [{**d.obj.to_dict(), "name": d.obj.name, "start": list(d.start),
                                "velocity": list(d.velocity)} for d in world.distractors],
               "colors": {k: list(v) for k, v in tw.COLORS.items()}},
        events=[e.to_dict() for e in sorted(world.events, key=lambda e: e.start_frame)],
        questions=questions,
    )
    truth.save(truth_path or out_path.with_suffix(".json"))
    return truth
