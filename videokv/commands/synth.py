"""`videokv synth`: render a toy-world video and its ground truth (toyworld/synth.py)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from videokv.toyworld.synth import DEFAULT_FPS, DEFAULT_SIZE, render_video


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x240, got {text!r}") from None
    return w, h


def main(argv: list[str] | None = None) -> int:
    from videokv.runtime import load_settings

    parser = argparse.ArgumentParser(prog="videokv synth", description="Render a toy-world video and its ground truth.")
    parser.add_argument("out", type=Path, help="output video (.mp4, .mkv or .webm)")
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the video")
    parser.add_argument("--events", type=int, default=8, help="events (the needles: cards and shapes)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same frames and questions")
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help="frame rate of the file")
    parser.add_argument("--size", type=_parse_size, default=DEFAULT_SIZE, help="WxH, e.g. 320x240")
    parser.add_argument("--truth", type=Path, default=None, help="ground-truth JSON (default: OUT with .json)")
    parser.add_argument("--codec", default=None, help="encoder name (default: libx264 / mpeg4; VP9 for .webm)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        s = load_settings()
        truth = render_video(args.out, args.minutes, args.events, args.seed, args.fps, args.size, args.truth,
                             args.codec, chunk_seconds=s.chunk_frames / s.sample_fps)
    except (ValueError, RuntimeError) as exc:
        print(f"videokv synth: {exc}", file=sys.stderr)
        return 2
    v = truth.video
    truth_path = args.truth or args.out.with_suffix(".json")
    print(f"wrote {args.out} ({v['duration']:.1f} s, {v['width']}x{v['height']} @ {v['fps']:g} fps, {v['codec']}, "
          f"{len(truth.events)} events, {len(truth.questions)} questions) and {truth_path} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
