"""`videokv bench counting`: "how many times" questions answered by the LLM (bilevel, the
method's decode) and by the span counter (query/counting.py) over the same stored videos,
side by side; and the counter's accuracy against its threshold, which is how the shipped
threshold was chosen.

Videos are `videokv bench needle` haystacks (bench/_haystack.py), but with --seed 1 by default
so the threshold is never fitted on the needle bench's own haystacks (seed 0). Each haystack
gets counting questions with every truth the counter must tell apart:

  0       a colour/shape pair that is in no event and no distractor
  1       each shape needle seen once (the attribute shape and both ordering shapes)
  2 or 3  the needle bench's counting pair (one in the cluster, the rest spread at random)

The counter needs only the question's score for every frame (per-frame vectors stored at
ingest; query/grounding.py frame_scores) or every chunk (the indexed chunk vectors;
chunk_scores), so one scoring per question gives its answer at every threshold
of --frame-thresholds and --thresholds. JSON + PNG (accuracy vs threshold, with the LLM's
accuracy as a flat line) + markdown next to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ._common import SIZE, bench_settings, floats, ints, line_chart, log, store_args, write_outputs
from ._haystack import haystack_seed, make_haystack
from .needle import TENANT


def _grid(lo: float, hi: float, step: float) -> list[float]:
    return [round(float(x), 4) for x in np.arange(lo, hi + step / 2, step)]


def questions_for(truth: dict, rng: np.random.Generator) -> list[dict]:
    """Counting questions with truths 0, 1 and 2-3 about one needle haystack's events."""
    from videokv.toyworld import render as tw

    shapes = [e for e in truth["events"] if e["kind"] == "shape"]
    seen = {(e["color"], e["shape"]) for e in shapes} | {tuple(d.split(" ", 1)) for d in truth["distractors"]}
    qs = [dict(q, truth=int(q["answer"])) for q in truth["questions"] if q["type"] == "counting"]
    counted = {(e["color"], e["shape"]) for e in shapes if e["id"] in qs[0]["event_ids"]} if qs else set()
    for e in shapes:
        pair = (e["color"], e["shape"])
        if pair not in counted and sum((x["color"], x["shape"]) == pair for x in shapes) == 1:
            qs.append({"type": "counting", "question": f"How many times did a {pair[0]} {pair[1]} appear?",
                       "answer": "1", "truth": 1, "event_ids": [e["id"]]})
    absent = [(c, s) for c in tw.COLORS for s in tw.SHAPES if (c, s) not in seen]
    c, s = absent[int(rng.integers(len(absent)))]
    qs.append({"type": "counting", "question": f"How many times did a {c} {s} appear?", "answer": "0",
               "truth": 0, "event_ids": []})
    return qs


def run(args) -> dict:
    from videokv.query.counting import SpanCounter
    from videokv.query.grounding import chunk_scores, frame_scores
    from videokv.runtime import Runtime
    from videokv.toyworld.grading import is_correct

    t0 = time.perf_counter()
    settings = bench_settings(args.threads, args.home)
    rt = Runtime(settings)
    q = rt.queries
    fps = float(settings.sample_fps)
    chunk_seconds = settings.chunk_frames / fps
    rows = []
    jobs = [(n, d, r) for n in sorted(args.lengths) for d in args.depths for r in range(args.repeats)]
    for j, (n, d, r) in enumerate(jobs, 1):
        path, truth, _, _ = make_haystack(args.workdir / "videos", n, d, r, args.seed, fps, 3.0, 1.0, chunk_seconds)
        res = rt.pipeline.ingest(path, tenant=TENANT)
        rec = rt.store.get_video(res.video_id)
        rng = np.random.default_rng([haystack_seed(args.seed, n, d, r), 5])
        for qa in questions_for(truth, rng):
            qv = q.oracle.question_vector(qa["question"]).numpy()
            scores = chunk_scores(q.store, q.oracle, rec, qv)[0].tolist()
            framed = frame_scores(q.store, q.oracle, rec, qv)
            fs = dict(enumerate(framed[0].tolist())) if framed is not None else {}
            row = {"length": n, "depth": d, "repeat": r, **qa, "scores": [round(x, 4) for x in scores],
                   "counter": {f"{t:g}": len(SpanCounter(t).spans(dict(enumerate(scores)))) for t in args.thresholds},
                   "frame_counter": {f"{t:g}": len(SpanCounter(t).spans(fs)) for t in args.frame_thresholds}
                   if framed is not None else {}}
            if args.lm:
                ans = q.ask(res.video_id, qa["question"], mode="bilevel", count_by="lm", max_new_tokens=16)
                row["lm"] = {"answer": ans.answer, "correct": bool(is_correct(qa, ans.answer))}
            rows.append(row)
        log(t0, "counting", f"{j}/{len(jobs)} haystack {n} frames depth {d:g}: {len(rows)} questions so far")
    return summarize(rows, args, rt, settings)


def _acc(xs: list[bool]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def summarize(rows: list[dict], args, rt, settings) -> dict:
    classes = {"all": lambda r: True, "0": lambda r: r["truth"] == 0, "1": lambda r: r["truth"] == 1,
               "2-3": lambda r: r["truth"] >= 2}
    sweep = {c: {f"{t:g}": _acc([r["counter"][f"{t:g}"] == r["truth"] for r in rows if f(r)])
                 for t in args.thresholds} for c, f in classes.items()}
    framed = [r for r in rows if r["frame_counter"]]
    sweep_frames = {c: {f"{t:g}": _acc([r["frame_counter"][f"{t:g}"] == r["truth"] for r in framed if f(r)])
                        for t in args.frame_thresholds} for c, f in classes.items()}
    best = max(args.thresholds, key=lambda t: sweep["all"][f"{t:g}"])
    lm = {c: _acc([r["lm"]["correct"] for r in rows if f(r)]) for c, f in classes.items()} if args.lm else None
    counter = rt.queries.counter
    at = {}
    for name, t in (("best", best), ("shipped", counter.threshold if counter else None)):
        if t is not None and f"{t:g}" in rows[0]["counter"]:
            at[f"per chunk, {name}"] = {"threshold": t, **{c: sweep[c][f"{t:g}"] for c in classes}}
    if framed:
        best_f = max(args.frame_thresholds, key=lambda t: sweep_frames["all"][f"{t:g}"])
        for name, t in (("best", best_f), ("shipped", counter.frame_threshold if counter else None)):
            if t is not None and f"{t:g}" in framed[0]["frame_counter"]:
                at[f"per frame, {name}"] = {"threshold": t, **{c: sweep_frames[c][f"{t:g}"] for c in classes}}
    by_length = {str(n): {"n": sum(r["length"] == n for r in rows),
                          "counter_best": _acc([r["counter"][f"{best:g}"] == r["truth"] for r in rows if r["length"] == n]),
                          "per_frame_shipped": _acc([r["frame_counter"].get(f"{counter.frame_threshold:g}") == r["truth"]
                                                     for r in framed if r["length"] == n])
                          if framed and counter and counter.frame_threshold is not None else None,
                          "lm": _acc([r["lm"]["correct"] for r in rows if r["length"] == n]) if args.lm else None}
                 for n in sorted(args.lengths)}
    config = {"lengths": args.lengths, "depths": args.depths, "repeats": args.repeats, "seed": args.seed,
              "thresholds": args.thresholds, "frame_thresholds": args.frame_thresholds, "size": list(SIZE),
              "oracle": rt.queries.oracle.identity, "vision": rt.backend.vision.identity, "home": str(settings.home)}
    return {"bench": "counting", "targets": {}, "total_s": round(time.perf_counter() - args.t0, 1), "config": config,
            "n": {c: sum(1 for r in rows if f(r)) for c, f in classes.items()}, "sweep": sweep,
            "sweep_frames": sweep_frames if framed else None, "lm": lm,
            "at": at, "by_length": by_length, "rows": rows}


def side_by_side(result: dict) -> str:
    lines = [f"counting questions: {result['n']} (by truth)"]
    for name, a in result["at"].items():
        lines.append(f"span counter {name} threshold {a['threshold']:g}: all {a['all']}, truth 0 {a['0']}, "
                     f"1 {a['1']}, 2-3 {a['2-3']}")
    if result["lm"]:
        lm = result["lm"]
        lines.append(f"LLM (bilevel decode):            all {lm['all']}, truth 0 {lm['0']}, 1 {lm['1']}, "
                     f"2-3 {lm['2-3']}")
        for name, a in result["at"].items():
            if "shipped" in name and lm["all"]:
                lines.append(f"counter {name} / LLM accuracy: {a['all'] / lm['all']:.2f}x")
    for n, c in result["by_length"].items():
        lines.append(f"  {n} frames: {c['n']} questions, per chunk (best) {c['counter_best']}, per frame "
                     f"(shipped) {c['per_frame_shipped']}, LLM {c['lm']}")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    ts = result["config"]["thresholds"]
    head = "| truth | n | " + " | ".join(f"{t:g}" for t in ts) + " | LLM |\n|---|---|" + "---|" * (len(ts) + 1)
    body = [f"| {c} | {result['n'][c]} | " + " | ".join(f"{result['sweep'][c][f'{t:g}']}" for t in ts)
            + f" | {(result['lm'] or {}).get(c)} |" for c in result["sweep"]]
    out = "Span-counter accuracy per chunk by threshold (columns) and the LLM's, by truth count\n\n" + \
        "\n".join([head] + body)
    if result["sweep_frames"]:
        fts = result["config"]["frame_thresholds"]
        out += ("\n\nPer frame, by threshold\n\n| truth | n | " + " | ".join(f"{t:g}" for t in fts) + " |\n|---|---|"
                + "---|" * len(fts) + "\n" + "\n".join(
                    f"| {c} | {result['n'][c]} | " + " | ".join(f"{result['sweep_frames'][c][f'{t:g}']}" for t in fts)
                    + " |" for c in result["sweep_frames"]))
    return out


def plot(result: dict, path: Path) -> None:
    from PIL import Image
    img = Image.new("RGB", (900, 460), "white")
    ts = result["config"]["thresholds"]
    series = {f"per chunk, truth {c}": [(t, result["sweep"][c][f"{t:g}"]) for t in ts] for c in result["sweep"]}
    if result["sweep_frames"]:
        series["per frame, all"] = [(t, result["sweep_frames"]["all"][f"{t:g}"])
                                    for t in result["config"]["frame_thresholds"]]
    if result["lm"]:
        series["LLM, all"] = [(t, result["lm"]["all"]) for t in (ts[0], ts[-1])]
    line_chart(img, (0, 0, 900, 460), series, "Counting: span counter (per chunk, per frame) vs LLM", "threshold (cosine)", "accuracy")
    img.save(path)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv bench counting", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=ints, default=[256, 1024], help="haystack sizes in sampled frames")
    ap.add_argument("--depths", type=floats, default=[0.1, 0.3, 0.5, 0.7, 0.9], help="where the needles sit (0..1)")
    ap.add_argument("--repeats", type=int, default=2, help="haystacks per length and depth")
    ap.add_argument("--seed", type=int, default=1, help="haystack seed (the needle bench uses 0)")
    ap.add_argument("--thresholds", type=floats, default=_grid(0.2, 0.6, 0.025), help="per-chunk thresholds swept")
    ap.add_argument("--frame-thresholds", type=floats, default=_grid(0.3, 0.55, 0.025),
                    help="per-frame thresholds swept")
    ap.add_argument("--no-lm", dest="lm", action="store_false", help="skip the LLM's answers")
    store_args(ap, "counting", videos="rendered haystacks")
    ap.add_argument("--install", action="store_true",
                    help="write the best thresholds into the toy world's weights manifest (the calibration "
                         "travels with the weights it was measured on)")
    args = ap.parse_args(argv)
    args.t0 = time.perf_counter()
    result = run(args)
    write_outputs(result, args.out, None, plot, markdown, side_by_side)
    if args.install:
        print(f"installed the count calibration into {install_calibration(result)}")
    return 0


def install_calibration(result: dict, folder: Path | None = None) -> Path:
    """The best per-chunk and per-frame thresholds of a run, into the weights' manifest, with
    the tower they were measured on (toyworld.loader.count_calibration reads them)."""
    from videokv.hashing import sha256_file
    from videokv.toyworld.loader import read_manifest, toyworld_dir

    folder = folder or toyworld_dir()
    at, cfg = result["at"], result["config"]
    manifest = read_manifest(folder)
    manifest["count_calibration"] = {
        "chunk": at["per chunk, best"]["threshold"],
        "frame": at["per frame, best"]["threshold"] if "per frame, best" in at else None,
        "measured_on": {"tower.safetensors": sha256_file(folder / "tower.safetensors")},
        "how": (f"videokv bench counting --seed {cfg['seed']} (lengths {cfg['lengths']}, depths {cfg['depths']}, "
                f"{result['n']['all']} questions): per chunk right {at['per chunk, best']['all']}"
                + (f", per frame right {at['per frame, best']['all']}" if "per frame, best" in at else "")),
    }
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path
