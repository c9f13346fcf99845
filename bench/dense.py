"""`videokv bench dense`: the embedded default on event-dense toy-world footage, the layout the
needle bench rarely makes: several cards of different colours and shapes (one shape shown
twice) within a few chunks, back to back across chunk boundaries, at any position in a chunk.

Videos are rendered here with their own layout (not the needle bench's, not the training
clips'): --seconds long (150 s to 30 min), --events events (5-12) each 3-7 s long with 2-14 s
between consecutive ones; at most half the events cards (distinct colours), the rest shapes
of distinct (colour, shape) except one pair shown twice; videos over 5 minutes put their
events in three dense clusters. Seeds from --seed (default 4000) upward: never a training or
calibration seed (the needle bench uses 0, counting 1, moments 5; the adaptive margin is
calibrated with --seed 3000). Questions are every TOYWORLD template the events allow
(toyworld.scenario.make_questions), graded by toyworld.grading.is_correct.

Variants, over the same stored videos:
  bilevel-k3    top-3 chunks at L (and the first and last), the rest at H; "how many
                times" by the span counter, "when" by the best moment (as the service does)
  bilevel-k1    the same with the top-1 chunk
  adaptive      the service's default: the best moment's chunks alone at L when it stands
                clear of the next (VIDEOKV_ADAPTIVE_MARGIN, --margin), else the top-3
  dense         every chunk at L, where it fits the LLM's positions
JSON (default runs/bench_dense.json), PNG and markdown next to it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from ._common import bench_settings, log, store_args, write_outputs

TYPES = ("retrieval", "attribute", "counting", "ordering", "temporal")
VARIANTS = ("bilevel-k3", "bilevel-k1", "adaptive", "dense")
TENANT = "bench-dense"
SIZE = (320, 240)
TAG = "dense"


def dense_needles(rng: np.random.Generator, seconds: float, n_events: int):
    """The events of one video as toyworld.scenario.Needle, in time order."""
    from videokv.toyworld import render as tw
    from videokv.toyworld.scenario import Needle

    n_cards = max(2, n_events // 2)
    colors = [str(c) for c in rng.permutation(list(tw.COLORS))]
    idents = [("card", colors[i], None, str(rng.integers(0, 10))) for i in range(n_cards)]
    pairs = [(str(c), str(s)) for c in tw.COLORS for s in tw.SHAPES]
    picks = [pairs[i] for i in rng.permutation(len(pairs))[:n_events - n_cards - 1]]
    idents += [("shape", c, s, None) for c, s in picks] + [("shape", *picks[0], None)] if picks else []
    idents = [idents[i] for i in rng.permutation(len(idents))]
    durations = np.round(rng.uniform(3, 7, len(idents)))
    gaps = np.round(rng.uniform(2, 14, len(idents)))
    clusters = np.array_split(np.arange(len(idents)), 1 if seconds <= 300 else 3)
    slot = seconds / len(clusters)
    out, t = [], 0.0
    for j, members in enumerate(clusters):
        need = sum(durations[i] + gaps[i] for i in members)
        if need > slot - 4:         # too many events for the span: shorter gaps, never under 2 s
            spare = sum(gaps[i] - 2 for i in members)
            shrink = max(0.0, 1 - (need - (slot - 4)) / spare) if spare > 0 else 0.0
            for i in members:
                gaps[i] = 2 + (gaps[i] - 2) * shrink
            need = sum(durations[i] + gaps[i] for i in members)
        t = j * slot + float(rng.uniform(2, max(2.0, slot - need - 2)))
        for i in members:
            kind, color, shape, digit = idents[i]
            out.append(Needle(kind, color, t, t + float(durations[i]), shape=shape, digit=digit))
            t += float(durations[i] + gaps[i])
    if out[-1].t_end > seconds - 1:
        raise ValueError(f"{n_events} events do not fit {seconds:g} s")
    return out


def make_video(videos: Path, seconds: float, n_events: int, seed: int, fps: float, chunk_seconds: float,
               size: tuple[int, int] = SIZE):
    """(path, ground truth) of one dense video at `fps` and `size`, reused when already rendered."""
    import json

    from videokv.toyworld import scenario
    from videokv.toyworld.synth import encode_video

    path = videos / f"dense-{seconds:g}s-e{n_events}-s{seed}-{size[0]}x{size[1]}-{fps:g}fps.mp4"
    truth_path = path.with_suffix(".json")
    if path.exists() and truth_path.exists():
        return path, json.loads(truth_path.read_text())
    rng = np.random.default_rng([seed, 28])
    n_frames = int(round(seconds * fps))
    world = scenario.build_needle_world(seed, n_frames, fps, size, dense_needles(rng, seconds, n_events))
    videos.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
    encode_video(tmp, (world.render(i) for i in range(n_frames)), fps, size)
    os.replace(tmp, path)
    truth = {"seconds": seconds, "events": [e.to_dict() for e in sorted(world.events, key=lambda e: e.start_frame)],
             "questions": scenario.make_questions(world, np.random.default_rng([seed, 1]), chunk_seconds)}
    truth_path.write_text(json.dumps(truth, indent=1))
    return path, truth


def ask(q, video_id: str, qa: dict, variant: str, max_new_tokens: int) -> dict:
    from videokv.query.engine import ContextTooLong
    from videokv.toyworld.grading import is_correct

    kw = {"bilevel-k3": {"top_k": 3}, "bilevel-k1": {"top_k": 1}, "adaptive": {},
          "dense": {"mode": "dense"}}[variant]
    try:
        a = q.ask(video_id, qa["question"], max_new_tokens=max_new_tokens, **kw)
    except ContextTooLong:
        return {"skipped": "does not fit"}
    return {"answer": a.answer, "right": bool(is_correct(qa, a.answer)), "by": a.extra.get("answered_by", "lm"),
            "l_chunks": a.levels.get("L"), "ttft_ms": a.timings["ttft_ms"]}


def run(args) -> dict:
    from videokv.runtime import Runtime

    t0 = time.perf_counter()
    # --margin over the settings' VIDEOKV_ADAPTIVE_MARGIN; not given: the settings' own (the
    # service's default), never "off" by accident
    settings = bench_settings(args.threads, args.home,
                              **({} if args.margin is None else {"adaptive_margin": args.margin}))
    rt = Runtime(settings)
    q = rt.queries
    fps = float(settings.sample_fps)
    chunk_seconds = settings.chunk_frames / fps
    rows = []
    for seconds, n_events in args.videos:
        for r in range(args.repeats):
            seed = args.seed + r
            path, truth = make_video(args.workdir, seconds, n_events, seed, args.fps or fps, chunk_seconds,
                                     tuple(args.size))
            vid = rt.pipeline.ingest(path, tenant=TENANT).video_id
            for qa in truth["questions"]:
                rows.append({"seconds": seconds, "events": n_events, "seed": seed, "type": qa["type"],
                             "question": qa["question"], "expected": qa.get("answer"),
                             **{v: ask(q, vid, qa, v, args.max_new_tokens) for v in args.variants}})
            log(t0, TAG, f"{seconds:g} s, {n_events} events, seed {seed}: "
                         + ", ".join(f"{v} {sum(x[v].get('right', False) for x in rows)}" for v in args.variants)
                         + f" right of {len(rows)}")
    summary = summarize(rows, args.variants)
    k3 = summary["bilevel-k3"]
    targets = {"retrieval_ge_0.90": {"value": k3["retrieval"], "met": (k3["retrieval"] or 0) >= 0.9},
               "attribute_ge_0.90": {"value": k3["attribute"], "met": (k3["attribute"] or 0) >= 0.9},
               "all_types_ge_0.75": {"value": k3["all"], "met": (k3["all"] or 0) >= 0.75}}
    return {"config": {"videos": args.videos, "repeats": args.repeats, "seed": args.seed,
                       "margin": settings.adaptive_margin, "size": args.size, "fps": args.fps or fps,
                       "variants": args.variants},
            "summary": summary, "targets": targets, "rows": rows, "total_s": round(time.perf_counter() - t0, 1)}


def summarize(rows: list[dict], variants) -> dict:
    out = {}
    for v in variants:
        got = {}
        for t in TYPES + ("all",):
            xs = [r[v]["right"] for r in rows if "right" in r[v] and t in ("all", r["type"])]
            got[t] = round(sum(xs) / len(xs), 4) if xs else None
        got["n"] = sum("right" in r[v] for r in rows)
        out[v] = got
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def side_by_side(res: dict) -> str:
    s = res["summary"]
    lines = [f"{'variant':<12}" + "".join(f"{t:>11}" for t in TYPES + ("all",)) + f"{'n':>6}"]
    for v, got in s.items():
        lines.append(f"{v:<12}" + "".join(f"{_pct(got[t]):>11}" for t in TYPES + ("all",)) + f"{got['n']:>6}")
    return "\n".join(lines)


def markdown(res: dict) -> str:
    s = res["summary"]
    lines = ["| variant | " + " | ".join(TYPES) + " | all | questions |", "|" + "---|" * (len(TYPES) + 3)]
    for v, got in s.items():
        lines.append(f"| {v} | " + " | ".join(_pct(got[t]) for t in TYPES) + f" | {_pct(got['all'])} | {got['n']} |")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    from PIL import Image

    from ._common import line_chart

    s = res["summary"]
    img = Image.new("RGB", (700, 380), "white")
    series = {v: [(i, s[v][t]) for i, t in enumerate(TYPES + ("all",))] for v in s}
    line_chart(img, (0, 0, 700, 380), series, "right answers by type: retrieval, attribute, counting, ordering, "
               "temporal, all", "type (0-5)", "")
    img.save(path)


def _videos(text: str) -> list[tuple[float, int]]:
    """"150x8,600x12" -> [(150.0, 8), (600.0, 12)] (seconds x events)."""
    out = []
    for part in text.split(","):
        s, e = part.lower().split("x")
        out.append((float(s), int(e)))
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv bench dense", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=_videos, default=_videos("150x5,150x8,600x10,1800x12"),
                    help="SECONDSxEVENTS,... (default 150x5,150x8,600x10,1800x12)")
    ap.add_argument("--repeats", type=int, default=2, help="videos per (seconds, events), seeds --seed upward")
    ap.add_argument("--seed", type=int, default=4000, help="first video seed (calibrate with another)")
    ap.add_argument("--margin", type=float, default=None,
                    help="adaptive top-k margin (default: VIDEOKV_ADAPTIVE_MARGIN, 0.05; with that set empty, "
                         "adaptive is the top-3)")
    ap.add_argument("--variants", type=lambda s: [x for x in s.split(",") if x], default=list(VARIANTS),
                    help=f"which of {','.join(VARIANTS)}")
    ap.add_argument("--size", type=lambda s: [int(x) for x in s.lower().split("x")], default=list(SIZE),
                    help="rendered WxH (default 320x240; TOYWORLD allows 160x120 to 1280x720)")
    ap.add_argument("--fps", type=float, default=None,
                    help="rendered frame rate (default: the sampling rate, so every frame is sampled)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="longest answer")
    store_args(ap, "dense")
    args = ap.parse_args(argv)
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; known: {', '.join(VARIANTS)}")
    write_outputs(run(args), args.out, None, plot, markdown, side_by_side)
    return 0
