"""`videokv bench needle`: needle-in-a-haystack accuracy vs haystack length and needle depth.

In the style of the Video-X2L needle figure: toy-world haystacks of --lengths sampled
frames (at the default 1 fps sampling a haystack of 1024 frames is a 1024 s video; it is
rendered at the sampling rate, so every rendered frame is sampled), with needles around
--depths (fractions of the video), --repeats haystacks per (length, depth). Each haystack
is ingested ONCE with the real pipeline (`Runtime().pipeline.ingest`); then every question
is asked in every mode from the stored KVs, without any video prefill:

  dense           every chunk's L-KV; run only where the assembled context plus the
                  question and --max-new-tokens fits the LLM's max_position_embeddings
                  (counted from the stored chunk records before running), else recorded
                  as "does not fit"
  sparse          every chunk's H-KV
  bilevel         the oracle's top-k chunks at L, the rest at H (QueryEngine's default)
  adaptive        bilevel with the adaptive top-k (query/grounding.py `focus`: only the best
                  moment's chunks at L when it is the one match; VIDEOKV_ADAPTIVE_MARGIN
                  or 0.05), else as bilevel; not run by default
  bilevel-random  the oracle ablation: as many L chunks as bilevel loaded, chosen by a
                  seeded RNG instead of by the oracle (QueryEngine.ask(chunks=...))

Both bilevel variants also get the first and last chunk at L when the engine's
always_first_last is on (the default); bilevel-random then draws, from the other chunks,
exactly as many as the oracle's top-k added beyond first/last, so both load the same number
of L chunks.

What "needle at depth d" means. A haystack of T seconds holds one needle cluster of five
events, each --needle-seconds long (default 3 s) with --gap-seconds (1 s) between them, in
this order:

  ordering A | attribute shape | card | counting #1 | ordering B

centred so that the card's midpoint is at d*T (shifted inwards when the cluster would not
fit, e.g. depth 0.1 of a 64 s haystack; the JSON records every needle's actual depth):

  retrieval  "What digit was shown on the {color} card?"  the card is the needle; at d.
  temporal   "When did the {color} card appear?"          the same card; at d.
  attribute  "What color was the {shape}?"  the only event of that shape; one slot before
             the card (d*T - needle - gap seconds).
  ordering   "Which appeared first, the A or the B?"  two single objects flanking the card
             two slots either side; the pair straddles d (their midpoint is at d*T).
  counting   "How many times did a {color} {shape} appear?" (answer 2 or 3): occurrence #1
             sits in the cluster, one slot after the card; the other one or two are spread
             at random over the rest of the haystack. Depth marks only the first of them:
             counting is an aggregate over the whole video by nature.

Identities are drawn so every question has exactly one answer (one card; the attribute
shape appears once; ordering objects appear once, with shapes other than the attribute's
and the counting pair's); distractors (0-4 small moving shapes) are drawn as in every toy
world and never share an event's (colour, shape) nor the shape of a single event. Questions
use ingest.scenario's templates and are graded by ingest.grading.is_correct.

Metrics, per mode and per (length, depth, type): accuracy; oracle recall@k (the oracle's
top-k chunks overlap the needle event; grading.evidence_hits' overlap rule; the summary's
recall@k is over retrieval/attribute/temporal, counting/ordering have it per type, "any of
the question's events"); needle_in_l (the chunks loaded at L overlap the needle: 1 for dense,
0 for sparse); KV bytes loaded (Answer.kv_bytes_loaded) and its ratio to the dense context's
bytes (computed from the chunk records for every haystack, also where dense does not fit);
TTFT (Answer.timings["ttft_ms"], with the video's H-set already hot in the pager, as for a
hot video in the service; bilevel-random skips retrieval, so its TTFT has no oracle cost);
context tokens; plus render and ingest time per haystack.

Videos go to --workdir/videos with a JSON ground truth each; a video whose ground truth
records the same spec is reused, not re-rendered, so the pipeline deduplicates it by content
hash (same bytes, same model fingerprint, tenant "bench-needle") and a re-run only asks.
Ingest times of reused haystacks come from --workdir/ingest_times.json.

Outputs: a side-by-side table (modes as columns, one row per length), --out JSON (default
runs/bench_needle.json, rewritten after every haystack with "partial": true until the end),
a heatmap PNG (length x depth, one panel per mode plus oracle recall@k; drawn with PIL) and a
markdown table for the README (same name, .png / .md).

Untrained vision towers make accuracies low: this bench measures, it does not expect.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from videokv.query.engine import ContextTooLong

MODES = ("dense", "sparse", "bilevel", "bilevel-random", "adaptive")
TYPES = ("retrieval", "attribute", "counting", "ordering", "temporal")
SINGLE_NEEDLE_TYPES = ("retrieval", "attribute", "temporal")
TENANT = "bench-needle"
LAYOUT_VERSION = 1
SIZE = (320, 240)


def _log(t0: float, msg: str) -> None:
    s = time.perf_counter() - t0
    print(f"[needle {int(s // 60):02d}:{int(s % 60):02d}] {msg}", flush=True)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _round(x, nd=4):
    return None if x is None else round(float(x), nd)


# ----------------------------------------------------------------------------- haystacks

def haystack_seed(seed: int, length: int, depth: float, repeat: int) -> int:
    return int(np.random.SeedSequence([seed, length, int(round(depth * 1000)), repeat]).generate_state(1)[0])


def needle_layout(rng: np.random.Generator, n_frames: int, fps: float, depth: float,
                  needle_s: float = 3.0, gap_s: float = 1.0):
    """(needles, roles): the five-slot cluster with the card's midpoint at depth * T plus the
    other counting occurrences elsewhere (see the module docstring). roles maps
    card/attribute/ordering/counting/cluster to needle indices."""
    from videokv.toyworld import render as tw
    from videokv.toyworld.scenario import Needle

    colors, shapes = list(tw.COLORS), list(tw.SHAPES)
    ns, gs = max(1, int(round(needle_s * fps))), max(1, int(round(gap_s * fps)))
    margin = max(1, int(round(0.5 * fps)))
    span = 5 * ns + 4 * gs
    if n_frames - 2 * margin < span + 2 * (ns + gs):
        raise ValueError(f"a haystack of {n_frames / fps:g} s is too short for the needle cluster "
                         f"({span / fps:g} s) and the counting repeats")
    centre = depth * n_frames                                   # in frames
    start = int(round(centre - 2 * (ns + gs) - ns / 2))
    start = min(max(start, margin), n_frames - margin - span)
    slots = [(start + j * (ns + gs), start + j * (ns + gs) + ns) for j in range(5)]

    card = ("card", str(rng.choice(colors)), None, str(rng.integers(0, 10)))
    s_attr = str(rng.choice(shapes))
    attr = ("shape", str(rng.choice(colors)), s_attr, None)
    s_count = str(rng.choice([s for s in shapes if s != s_attr]))
    count_id = ("shape", str(rng.choice(colors)), s_count, None)
    s_a, s_b = (str(s) for s in rng.choice([s for s in shapes if s not in (s_attr, s_count)], 2, replace=False))
    ord_a = ("shape", str(rng.choice(colors)), s_a, None)
    ord_b = ("shape", str(rng.choice(colors)), s_b, None)
    n_count = int(rng.integers(2, 4))

    ids = [ord_a, attr, card, count_id, ord_b]
    spans = list(slots)
    # The other counting occurrences: random free places outside everything placed so far.
    for _ in range(n_count - 1):
        free = [s for s in range(margin, n_frames - margin - ns + 1)
                if all(s + ns + gs <= a or b + gs <= s for a, b in spans)]
        if not free:
            raise ValueError(f"no room for {n_count} counting repeats in {n_frames / fps:g} s")
        s = int(rng.choice(free))
        ids.append(count_id)
        spans.append((s, s + ns))
    needles = [Needle(kind=k, color=c, shape=sh, digit=d, t_start=a / fps, t_end=b / fps)
               for (k, c, sh, d), (a, b) in zip(ids, spans)]
    roles = {"ordering": [0, 4], "attribute": 1, "card": 2, "counting": [3] + list(range(5, len(needles))),
             "cluster": [0, 1, 2, 3, 4]}
    return needles, roles


def needle_questions(world, roles: dict, rng: np.random.Generator, chunk_seconds: float,
                     types=TYPES) -> list[dict]:
    """One question per type (TOYWORLD templates from ingest.scenario) about the needles;
    each carries needle_depth: where its depth-defining needle(s) actually sit (0-1)."""
    from videokv.toyworld import scenario

    ev = world.events
    T = world.duration

    def depth(*events):
        return round(statistics.fmean((e.start_frame + e.end_frame) / 2 / world.fps for e in events) / T, 4)

    card, attr = ev[roles["card"]], ev[roles["attribute"]]
    a, b = (ev[i] for i in roles["ordering"])
    if rng.random() < 0.5:
        a, b = b, a
    group = sorted((ev[i] for i in roles["counting"]), key=lambda e: e.start_frame)
    made = {
        "retrieval": (scenario.retrieval_question(card), depth(card)),
        "attribute": (scenario.attribute_question(attr), depth(attr)),
        "counting": (scenario.counting_question(group), depth(ev[roles["counting"][0]])),
        "ordering": (scenario.ordering_question(a, b), depth(a, b)),
        "temporal": (scenario.temporal_question(card, chunk_seconds), depth(card)),
    }
    qs = []
    for t in types:
        q, d = made[t]
        qs.append({**q, "id": f"q{len(qs)}", "needle_depth": d})
    return qs


def make_haystack(videos: Path, length: int, depth: float, repeat: int, seed: int, fps: float,
                  needle_s: float, gap_s: float, chunk_seconds: float) -> tuple[Path, dict, bool, float]:
    """(video path, ground truth with one question per type, reused, render seconds). Reuses
    a video whose ground truth records the same spec (same bytes -> the pipeline deduplicates
    the ingest); the temporal tolerance is set to chunk_seconds either way."""
    from videokv.toyworld import scenario
    from videokv.toyworld.synth import GENERATOR_VERSION, encode_video

    name = f"needle-n{length}-d{depth:g}-r{repeat}-s{seed}"
    path, truth_path = videos / f"{name}.mp4", videos / f"{name}.json"
    hseed = haystack_seed(seed, length, depth, repeat)
    n_frames = length                     # rendered at the sampling rate: every frame is sampled
    spec = {"layout": LAYOUT_VERSION, "generator": GENERATOR_VERSION, "seed": seed, "haystack_seed": hseed,
            "length": length, "depth": depth, "repeat": repeat, "fps": fps, "n_frames": n_frames,
            "size": list(SIZE), "needle_seconds": needle_s, "gap_seconds": gap_s}

    def tolerance(truth):
        for q in truth["questions"]:
            if q["type"] == "temporal":
                q["tolerance_s"] = chunk_seconds
        return truth

    if path.exists() and truth_path.exists():
        try:
            truth = json.loads(truth_path.read_text())
            if truth.get("spec") == spec:
                return path, tolerance(truth), True, 0.0
        except (OSError, ValueError):
            pass
    t = time.perf_counter()
    rng = np.random.default_rng([hseed, 2])
    needles, roles = needle_layout(rng, n_frames, fps, depth, needle_s, gap_s)
    world = scenario.build_needle_world(hseed, n_frames, fps, SIZE, needles)
    questions = needle_questions(world, roles, rng, chunk_seconds)
    videos.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
    codec = encode_video(tmp, (world.render(i) for i in range(n_frames)), fps, SIZE)
    os.replace(tmp, path)
    truth = {"spec": spec, "video": {"path": path.name, "codec": codec, "width": SIZE[0], "height": SIZE[1],
                                     "fps": fps, "n_frames": n_frames, "duration": n_frames / fps},
             "roles": roles, "needles": [n.to_dict() for n in needles],
             "events": [{**e.to_dict(), "depth": round((e.start_frame + e.end_frame) / 2 / n_frames, 4)}
                        for e in world.events],
             "distractors": [d.obj.name for d in world.distractors], "questions": questions}
    truth_path.write_text(json.dumps(truth, indent=1) + "\n")
    return path, tolerance(truth), False, time.perf_counter() - t


# ----------------------------------------------------------------------------- asking

def _covers(qa: dict, events: list[dict], spans: list[tuple[float, float]]) -> tuple[bool, float]:
    """(any of the question's events overlaps a span, fraction of its events overlapped)."""
    from videokv.toyworld.grading import evidence_hits

    evidence = [{"t_start": a, "t_end": b} for a, b in spans]
    hit = evidence_hits(qa, events, evidence)
    mine = [e for e in events if e["id"] in qa.get("event_ids", [])]
    frac = sum(evidence_hits({"event_ids": [e["id"]]}, events, evidence) for e in mine) / max(1, len(mine))
    return bool(hit), frac


def ask_haystack(rt, video_id: str, truth: dict, modes, top_k: int, max_new_tokens: int,
                 seed: int, max_pos: int, types=TYPES) -> list[dict]:
    """Every question of the haystack whose type is in `types`, in every mode; one row per
    question. A mode whose context + question + answer needs more than max_pos positions is
    skipped (0: no limit). bilevel-random draws its chunks from a RNG seeded by (seed, type)."""
    from videokv.toyworld.grading import is_correct

    q = rt.queries
    be = rt.backend
    rec = rt.store.get_video(video_id)
    n = rec.chunks_total
    plan = {s.index: s for s in rec.plan}
    records = {r.index: r for r in rt.store.chunk_records(video_id)}
    prefix_tokens, prefix_bytes = records[-1].tokens["full"], records[-1].nbytes["full"]
    tokens = {lvl: [records[i].tokens[lvl] for i in range(n)] for lvl in ("L", "H")}
    nbytes = {lvl: [records[i].nbytes[lvl] for i in range(n)] for lvl in ("L", "H")}
    dense_bytes = prefix_bytes + sum(nbytes["L"])
    first_last = {0, n - 1} if (q.always_first_last and n) else set()
    q.hot.get(video_id, "H")                                # H-set hot: every mode timed alike
    if "adaptive" in modes and q.adaptive_margin is None:
        q.adaptive_margin = 0.05                            # VIDEOKV_ADAPTIVE_MARGIN unset
    rows = []
    for qa in (x for x in truth["questions"] if x["type"] in types):
        suffix = be.prompt_parts(rt.config.system_prompt, qa["question"])[1]
        extra = len(be.tokenize(suffix)) + max_new_tokens     # question + answer after the video
        hits = q.retrieve(video_id, qa["question"], top_k) if top_k else []
        top = [h.chunk for h in hits]
        recall, frac = _covers(qa, truth["events"], [(plan[i].t_start, plan[i].t_end) for i in top])
        oracle_l = sorted(set(top) | first_last)
        others = [i for i in range(n) if i not in first_last]
        n_random = len(set(top) - first_last)
        rng = np.random.default_rng([seed, TYPES.index(qa["type"])])
        random_l = sorted(int(i) for i in rng.choice(others, n_random, replace=False)) if n_random else []
        row = {"question": qa["question"], "type": qa["type"], "expected": qa["answer"],
               "needle_depth": qa["needle_depth"], "event_ids": qa["event_ids"], "oracle_top_k": top,
               "oracle_scores": [round(float(h.score), 4) for h in hits], "recall_at_k": recall,
               "events_covered_at_k": round(frac, 4), "dense_kv_bytes": dense_bytes, "results": {}}
        for mode in modes:
            l_set = {"dense": list(range(n)), "sparse": [], "bilevel": oracle_l, "adaptive": oracle_l,
                     "bilevel-random": sorted(set(random_l) | first_last)}[mode]
            as_l = set(l_set)
            ctx = prefix_tokens + sum(tokens["L" if i in as_l else "H"][i] for i in range(n))
            if max_pos and ctx + extra > max_pos:
                row["results"][mode] = {"skipped": "does not fit", "context_tokens": ctx,
                                        "needed_positions": ctx + extra, "context_limit": max_pos}
                continue
            kw = {"chunks": random_l} if mode == "bilevel-random" else {}
            if mode == "adaptive":      # top_k unset: the engine's adaptive top-k decides
                kw = {"top_k": None}
            t = time.perf_counter()
            # Every mode decodes with the LLM, counting and "when" included: the modes compare KV levels.
            try:
                ans = q.ask(video_id, qa["question"], mode=mode if mode in ("dense", "sparse") else "bilevel",
                            **{"top_k": top_k, **kw}, max_new_tokens=max_new_tokens, count_by="lm", when_by="lm")
            except ContextTooLong as e:
                row["results"][mode] = {"skipped": "does not fit", "context_tokens": ctx, "reason": str(e),
                                        "needed_positions": ctx + extra, "context_limit": max_pos}
                continue
            wall = time.perf_counter() - t
            loaded_l = sorted(e.chunk for e in ans.evidence if e.level == "L") if mode != "dense" else l_set
            in_l, _ = _covers(qa, truth["events"], [(plan[i].t_start, plan[i].t_end) for i in loaded_l])
            row["results"][mode] = {
                "answer": ans.answer, "correct": bool(is_correct(qa, ans.answer)),
                "kv_bytes_loaded": ans.kv_bytes_loaded, "bytes_vs_dense": round(ans.kv_bytes_loaded / dense_bytes, 4),
                "ttft_ms": ans.timings["ttft_ms"], "timings": ans.timings, "context_tokens": ans.context_tokens,
                "l_chunks": loaded_l, "needle_in_l": in_l, "video_prefill_runs": ans.video_prefill_runs,
                "wall_s": round(wall, 3)}
        if qa["type"] == "counting" and q.counter is not None:
            # The service's default answer to a counting question (query/counting.py), reported
            # apart from the modes: it reads the oracle's scores, not any KV.
            ans = q.ask(video_id, qa["question"], count_by="oracle")
            row["counter"] = {"answer": ans.answer, "correct": bool(is_correct(qa, ans.answer)),
                              "count": ans.extra["count"], "spans": ans.extra["spans"],
                              "threshold": ans.extra["threshold"], "ttft_ms": ans.timings["ttft_ms"]}
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- summary

def _cell(rows: list[dict], mode: str) -> dict:
    ran = [r["results"][mode] for r in rows if mode in r["results"] and "skipped" not in r["results"][mode]]
    skipped = sum(1 for r in rows if "skipped" in r["results"].get(mode, {}))
    return {
        "n": len(ran), "skipped": skipped,
        "accuracy": _round(_mean([float(x["correct"]) for x in ran])),
        "kv_bytes_mean": _round(_mean([x["kv_bytes_loaded"] for x in ran]), 1),
        "bytes_vs_dense": _round(_mean([x["bytes_vs_dense"] for x in ran])),
        "ttft_ms_mean": _round(_mean([x["ttft_ms"] for x in ran]), 2),
        "context_tokens_mean": _round(_mean([x["context_tokens"] for x in ran]), 1),
        "needle_in_l": _round(_mean([float(x["needle_in_l"]) for x in ran])),
    }


def _recall(rows: list[dict]) -> float | None:
    return _round(_mean([float(r["recall_at_k"]) for r in rows]))


def summarize(questions: list[dict], modes, lengths, depths, types) -> dict:
    single = [r for r in questions if r["type"] in SINGLE_NEEDLE_TYPES]
    by = lambda **kw: [r for r in questions if all(r[k] == v for k, v in kw.items())]  # noqa: E731
    return {
        "by_mode": {m: _cell(questions, m) for m in modes},
        "by_length": {str(n): {m: _cell(by(length=n), m) for m in modes} for n in lengths},
        "by_type": {t: {m: _cell(by(type=t), m) for m in modes} for t in types},
        "grid": {m: {str(n): {f"{d:g}": _cell(by(length=n, depth=d), m) for d in depths} for n in lengths}
                 for m in modes},
        "cells": [{"length": n, "depth": d, "type": t, "recall_at_k": _recall(by(length=n, depth=d, type=t)),
                   **{m: _cell(by(length=n, depth=d, type=t), m) for m in modes}}
                  for n in lengths for d in depths for t in types if by(length=n, depth=d, type=t)],
        "counting_by_counter": {
            "by_length": {str(n): _counter([r for r in questions if r["length"] == n]) for n in lengths},
            "overall": _counter(questions)},
        "recall_at_k": {
            "single_needle_types": list(SINGLE_NEEDLE_TYPES),
            "overall": _recall(single),
            "by_length": {str(n): _recall([r for r in single if r["length"] == n]) for n in lengths},
            "by_type": {t: _recall(by(type=t)) for t in types},
            "grid": {str(n): {f"{d:g}": _recall([r for r in single if r["length"] == n and r["depth"] == d])
                              for d in depths} for n in lengths},
        },
    }


def _counter(rows: list[dict]) -> dict:
    """The span counter's accuracy on the counting questions among rows that have it."""
    ran = [r["counter"] for r in rows if "counter" in r]
    return {"n": len(ran), "accuracy": _round(_mean([float(x["correct"]) for x in ran]))}


def _fmt_cell(c: dict, with_ttft: bool = True) -> str:
    if not c["n"]:
        return "does not fit" if c["skipped"] else "-"
    s = f"{c['accuracy']:.2f} acc, {c['bytes_vs_dense']:.2f}x bytes"
    return s + (f", {c['ttft_ms_mean']:.0f} ms" if with_ttft else "")


def side_by_side(result: dict) -> str:
    modes, summ = result["config"]["modes"], result["summary"]
    w = 32
    lines = [f"{'frames':>7} {'recall@k':>8} | " + " | ".join(f"{m:<{w}}" for m in modes)]
    lines.append("-" * len(lines[0]))
    for n, cells in summ["by_length"].items():
        rc = summ["recall_at_k"]["by_length"].get(n)
        lines.append(f"{n:>7} {('-' if rc is None else f'{rc:.2f}'):>8} | "
                     + " | ".join(f"{_fmt_cell(cells[m]):<{w}}" for m in modes))
    rc = summ["recall_at_k"]["overall"]
    lines.append(f"{'all':>7} {('-' if rc is None else f'{rc:.2f}'):>8} | "
                 + " | ".join(f"{_fmt_cell(summ['by_mode'][m]):<{w}}" for m in modes))
    cc = summ.get("counting_by_counter", {})
    if cc.get("overall", {}).get("n"):
        lines.append("counting by the span counter (the service's default; the modes above decode it with the "
                     "LLM): " + ", ".join(f"{n} frames {c['accuracy']:.2f}" for n, c in cc["by_length"].items()
                                         if c["n"]) + f"; all {cc['overall']['accuracy']:.2f}")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    cfg, summ = result["config"], result["summary"]
    modes = cfg["modes"]
    out = [f"### Needle in a haystack ({cfg['model']}, vision `{cfg['vision']}`)", "",
           f"Toy-world haystacks, {cfg['sample_fps']:g} fps sampling, {cfg['chunk_frames']} frames/chunk, "
           f"L-KV {cfg['l_ratio']}x / H-KV {cfg['h_ratio']}x, top-k {cfg['top_k']}"
           + (" (+ first/last chunk)" if cfg["always_first_last"] else "")
           + (", H chunks paged without their timestamp rows" if cfg.get("h_text") == "drop" else "")
           + f", depths {', '.join(f'{d:g}' for d in cfg['depths'])}, {cfg['repeats']} repeat(s), "
           f"{len(cfg['types'])} question types. Each cell: accuracy / KV bytes vs dense / mean TTFT. "
           f"Dense runs only where the context fits {cfg['context_limit']} positions.", "",
           "| frames | oracle recall@k | " + " | ".join(modes) + " |",
           "|---:|---:|" + "---|" * len(modes)]

    def cell(c):
        if not c["n"]:
            return "does not fit" if c["skipped"] else "-"
        return f"{c['accuracy']:.2f} / {c['bytes_vs_dense']:.2f}x / {c['ttft_ms_mean']:.0f} ms"

    rc = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    for n, cells in summ["by_length"].items():
        out.append(f"| {n} | {rc(summ['recall_at_k']['by_length'].get(n))} | "
                   + " | ".join(cell(cells[m]) for m in modes) + " |")
    out.append(f"| all | {rc(summ['recall_at_k']['overall'])} | "
               + " | ".join(cell(summ["by_mode"][m]) for m in modes) + " |")
    out += ["", "Accuracy by question type:", "", "| type | oracle recall@k | " + " | ".join(modes) + " |",
            "|---|---:|" + "---:|" * len(modes)]
    for t, cells in summ["by_type"].items():
        out.append(f"| {t} | {rc(summ['recall_at_k']['by_type'].get(t))} | "
                   + " | ".join("-" if cells[m]["accuracy"] is None else f"{cells[m]['accuracy']:.2f}"
                                for m in modes) + " |")
    cc = summ.get("counting_by_counter", {})
    if cc.get("overall", {}).get("n"):
        out += ["", "Counting answered by the span counter (query/counting.py, the service's default for "
                "\"how many times\" questions; the table above decodes them with the LLM): "
                + ", ".join(f"{n} frames {c['accuracy']:.2f}" for n, c in cc["by_length"].items() if c["n"])
                + f"; all {cc['overall']['accuracy']:.2f}."]
    hs = result["haystacks"]
    fresh = [h for h in hs if not h["reused_ingest"]]
    fps = sum(h["frames"] for h in fresh) / sum(h["ingest_s"] for h in fresh) if fresh else None
    out += ["", f"{len(hs)} haystacks, {sum(h['frames'] for h in hs)} frames; ingest "
            + (f"{fps:.1f} frames/s" if fps else "reused") + f"; device {cfg['device']}, "
            f"{cfg['torch_threads']} torch threads. `videokv bench needle` (bench/needle.py).", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- heatmap

def _rgb(x: float) -> tuple[int, int, int]:
    """Accuracy 0..1 -> red .. yellow .. green (the usual needle-figure palette)."""
    x = min(max(x, 0.0), 1.0)
    stops = [(0.0, (214, 47, 39)), (0.5, (250, 220, 90)), (1.0, (26, 152, 80))]
    for (a, ca), (b, cb) in zip(stops, stops[1:]):
        if x <= b:
            f = (x - a) / (b - a)
            return tuple(int(round(ca[i] + f * (cb[i] - ca[i]))) for i in range(3))
    return stops[-1][1]


def heatmap(result: dict, path: Path) -> None:
    """One panel per mode (x: haystack length in frames, y: needle depth; colour: accuracy)
    plus a panel of the oracle's recall@k; PIL only (matplotlib is not a dependency)."""
    from PIL import Image, ImageDraw

    from videokv.toyworld.render import load_font

    cfg, summ = result["config"], result["summary"]
    lengths, depths = [str(n) for n in sorted(cfg["lengths"])], [f"{d:g}" for d in cfg["depths"]]
    order = [m for m in ("bilevel", "adaptive", "dense", "sparse", "bilevel-random") if m in cfg["modes"]]
    panels = [(f"{m}: accuracy", {n: {d: summ["grid"][m][n][d] for d in depths} for n in lengths}, "acc")
              for m in order]
    panels.append((f"oracle recall@{cfg['top_k']}", summ["recall_at_k"]["grid"], "recall"))
    f_title, f, f_small = load_font("DejaVuSans-Bold.ttf", 15), load_font("DejaVuSans.ttf", 13), \
        load_font("DejaVuSans.ttf", 11)
    heading = f"Needle in a haystack: {cfg['model']} + {cfg['vision']}, top-k {cfg['top_k']}"
    legend = "accuracy / recall; grey: no question ran (dense: context does not fit)"
    cw, ch = 64, 34
    left, top, gap = 62, 46, 34
    pw = left + max([cw * len(lengths), f_small.getlength("haystack (frames)")]
                    + [f_title.getlength(t) for t, _, _ in panels]) + 10
    pw, ph = int(pw), top + ch * len(depths) + 48
    cols = min(3, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    W = int(max(cols * pw + (cols - 1) * gap + 20, f_title.getlength(heading) + 20,
                left + 240 + f_small.getlength(legend) + 20))
    H = rows_n * (ph + gap) + 60
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    dr.text((10, 8), heading, fill="black", font=f_title)
    for p, (title, grid, kind) in enumerate(panels):
        ox, oy = 10 + (p % cols) * (pw + gap), 40 + (p // cols) * (ph + gap)
        dr.text((ox + left, oy), title, fill="black", font=f_title)
        for j, d in enumerate(depths):
            dr.text((ox + left - 8, oy + top + j * ch + ch / 2), d, fill="black", font=f, anchor="rm")
        for i, n in enumerate(lengths):
            dr.text((ox + left + i * cw + cw / 2, oy + top + len(depths) * ch + 6), n, fill="black", font=f,
                    anchor="mt")
            for j, d in enumerate(depths):
                c = grid[n][d]
                val = c if kind == "recall" else c["accuracy"]
                x0, y0 = ox + left + i * cw, oy + top + j * ch
                box = (x0, y0, x0 + cw - 2, y0 + ch - 2)
                if val is None:
                    fit = kind == "acc" and c["skipped"]
                    dr.rectangle(box, fill=(215, 215, 215))
                    dr.text((x0 + cw / 2 - 1, y0 + ch / 2 - 1), "no fit" if fit else "n/a", fill=(90, 90, 90),
                            font=f_small, anchor="mm")
                else:
                    dr.rectangle(box, fill=_rgb(val))
                    dr.text((x0 + cw / 2 - 1, y0 + ch / 2 - 1), f"{val:.2f}", fill="black", font=f, anchor="mm")
        dr.text((ox + left + cw * len(lengths) / 2, oy + top + len(depths) * ch + 24), "haystack (frames)",
                fill="black", font=f_small, anchor="mt")
        dr.text((ox + 2, oy + top - 18), "depth", fill="black", font=f_small)
    # colour bar
    bx, by = 10 + left, H - 26
    for k in range(200):
        dr.line([(bx + k, by), (bx + k, by + 10)], fill=_rgb(k / 199))
    dr.text((bx - 6, by + 5), "0", fill="black", font=f_small, anchor="rm")
    dr.text((bx + 206, by + 5), "1", fill="black", font=f_small, anchor="lm")
    dr.text((bx + 220, by + 5), legend, fill="black", font=f_small, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# ----------------------------------------------------------------------------- main

def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(allowed):
    def parse(text: str) -> list[str]:
        got = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in got if x not in allowed]
        if bad or not got:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}; got {text!r}")
        return got
    return parse


def _progress(t0: float, label: str):
    state = {"last": 0.0}

    def update(done: int, total: int) -> None:
        now = time.perf_counter()
        if done >= total or done == 0 or now - state["last"] >= 10:
            state["last"] = now
            _log(t0, f"  ingest {label}: {done}/{total} chunks")
    return update


def run(args) -> dict:
    import torch

    from videokv.runtime import Runtime

    from ._common import bench_settings

    t0 = time.perf_counter()
    settings = bench_settings(args.threads, args.home)
    rt = Runtime(settings)
    fps = float(settings.sample_fps)
    if not 1 <= fps <= 60:
        raise SystemExit(f"videokv bench needle: sampling at {fps:g} fps; haystacks are rendered at the sampling "
                         f"rate, which the toy world allows only in 1-60 fps")
    too_long = [n for n in args.lengths if settings.max_frames is not None and n > settings.max_frames]
    if too_long:
        raise SystemExit(f"videokv bench needle: lengths {too_long} exceed VIDEOKV_MAX_FRAMES={settings.max_frames}")
    chunk_seconds = settings.chunk_frames / fps
    be = rt.backend
    _log(t0, f"model {settings.model} loaded ({be.num_layers} layers, vision {be.vision.identity}); store "
             f"{settings.home}; {len(args.lengths) * len(args.depths) * args.repeats} haystacks "
             f"({sum(args.lengths) * len(args.depths) * args.repeats} frames), modes "
             f"{', '.join(args.modes)}, top-k {args.top_k}")
    videos = args.workdir / "videos"
    times_path = args.workdir / "ingest_times.json"
    try:
        ingest_times = json.loads(times_path.read_text())
    except (OSError, ValueError):
        ingest_times = {}
    max_pos = int(getattr(be.model.config, "max_position_embeddings", 0) or 0)
    limit = min(x for x in (max_pos, args.max_context) if x) if (max_pos or args.max_context) else 0
    cfg = {
        "lengths": args.lengths, "depths": args.depths, "repeats": args.repeats, "types": args.types,
        "modes": args.modes, "top_k": args.top_k, "seed": args.seed, "max_new_tokens": args.max_new_tokens,
        "needle_seconds": args.needle_seconds, "gap_seconds": args.gap_seconds, "render_fps": fps, "size": list(SIZE),
        "sample_fps": fps, "chunk_frames": settings.chunk_frames, "l_ratio": settings.l_ratio,
        "h_ratio": settings.h_ratio, "always_first_last": rt.queries.always_first_last, "model": settings.model,
        "h_text": rt.queries.pager.h_text, "window": rt.config.prefill.window,
        "vision": be.vision.identity, "fingerprint": rt.config.fingerprint(), "max_position_embeddings": max_pos,
        "context_limit": limit,
        "device": str(be.device), "dtype": str(be.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "workdir": str(args.workdir),
        "home": str(settings.home), "tenant": TENANT,
    }
    result = {"bench": "needle", "partial": True, "config": cfg, "haystacks": [], "questions": []}
    jobs = [(n, d, r) for n in sorted(args.lengths) for d in args.depths for r in range(args.repeats)]
    for j, (n, d, r) in enumerate(jobs, 1):
        label = f"{j}/{len(jobs)} ({n} frames, depth {d:g}, repeat {r})"
        path, truth, reused_video, render_s = make_haystack(videos, n, d, r, args.seed, fps, args.needle_seconds,
                                                            args.gap_seconds, chunk_seconds)
        _log(t0, f"haystack {label}: " + (f"reused {path.name}" if reused_video else
                                           f"rendered {path.name} in {render_s:.1f} s"))
        res = rt.pipeline.ingest(path, tenant=TENANT, progress=_progress(t0, label))
        key = f"{res.video_id}:{cfg['fingerprint']}"
        if not res.deduplicated and res.chunks_prefilled == res.chunks_total:
            ingest_times[key] = {"seconds": res.seconds, "frames": res.frames}
            args.workdir.mkdir(parents=True, exist_ok=True)
            times_path.write_text(json.dumps(ingest_times, indent=1) + "\n")
        prior = ingest_times.get(key, {})
        ingest_s = res.seconds if not res.deduplicated else prior.get("seconds")
        _log(t0, f"  ingest {label}: " + (f"deduplicated (video {res.video_id}, stored {res.chunks_total} chunks"
                                          + (f", first ingest took {ingest_s:.1f} s)" if ingest_s else ")")
                                          if res.deduplicated else
                                          f"{res.chunks_prefilled} chunks in {res.seconds:.1f} s "
                                          f"({res.frames_per_s:.1f} frames/s) as {res.video_id}"))
        if res.frames != n:
            _log(t0, f"  warning: {res.frames} frames sampled, expected {n}")
        t = time.perf_counter()
        rows = ask_haystack(rt, res.video_id, truth, args.modes, args.top_k, args.max_new_tokens,
                            haystack_seed(args.seed, n, d, r) + 3, limit, args.types)
        ask_s = time.perf_counter() - t
        for row in rows:
            row.update({"haystack": path.stem, "length": n, "depth": d, "repeat": r})
        recs = rt.store.chunk_records(res.video_id)
        dense_tokens = sum(x.tokens.get("L", x.tokens.get("full", 0)) for x in recs)
        result["haystacks"].append({
            "name": path.stem, "length": n, "depth": d, "repeat": r, "video": str(path), "video_id": res.video_id,
            "chunks": res.chunks_total, "frames": res.frames, "duration_s": truth["video"]["duration"],
            "render_s": round(render_s, 2), "reused_video": reused_video, "reused_ingest": res.deduplicated,
            "ingest_s": _round(ingest_s, 2),
            "ingest_frames_per_s": _round(res.frames / ingest_s, 2) if ingest_s else None,
            "ask_s": round(ask_s, 2), "dense_context_tokens": dense_tokens,
            "dense_kv_bytes": rows[0]["dense_kv_bytes"] if rows else None,
            "needles": [{k: e[k] for k in ("id", "name", "digit", "t_start", "t_end", "depth")}
                        for e in truth["events"]],
        })
        result["questions"] += rows
        acc = {m: sum(1 for x in rows if x["results"].get(m, {}).get("correct")) for m in args.modes}
        ran = {m: sum(1 for x in rows if "correct" in x["results"].get(m, {})) for m in args.modes}
        asks = sum(ran.values())
        _log(t0, f"  asked {len(rows)} questions x {len(args.modes)} modes in {ask_s:.1f} s"
                 + (f" ({ask_s / asks:.2f} s/answer)" if asks else "") + "; right: "
                 + ", ".join(f"{m} {acc[m]}/{ran[m]}" if ran[m] else f"{m} does not fit" for m in args.modes)
                 + f"; oracle recall {sum(x['recall_at_k'] for x in rows)}/{len(rows)}")
        result["summary"] = summarize(result["questions"], args.modes, sorted(args.lengths), args.depths, args.types)
        _write(result, args)
    fresh = [h for h in result["haystacks"] if not h["reused_ingest"]]
    answers = [x for r in result["questions"] for x in r["results"].values() if "wall_s" in x]
    result["timing"] = {
        "total_s": round(time.perf_counter() - t0, 2),
        "render_s": round(sum(h["render_s"] for h in result["haystacks"]), 2),
        "ingest_s_this_run": round(sum(h["ingest_s"] or 0 for h in fresh), 2),
        "ingest_frames_per_s": _round(sum(h["frames"] for h in fresh) / sum(h["ingest_s"] for h in fresh), 2)
        if fresh else None,
        "ask_s": round(sum(h["ask_s"] for h in result["haystacks"]), 2),
        "answers": len(answers),
        "s_per_answer": {m: _round(_mean([x["wall_s"] for r in result["questions"]
                                          for mm, x in r["results"].items() if mm == m and "wall_s" in x]), 3)
                         for m in args.modes},
    }
    result["partial"] = False
    return result


def _write(result: dict, args) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, args.out)


def main(argv: list[str]) -> int:
    from ._common import store_args

    ap = argparse.ArgumentParser(prog="videokv bench needle", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See bench/needle.py's docstring for what depth means per question type.")
    ap.add_argument("--lengths", type=_ints, default=[64, 256, 1024, 4096], help="haystack sizes in sampled frames")
    ap.add_argument("--depths", type=_floats, default=[0.1, 0.3, 0.5, 0.7, 0.9], help="needle depths (0-1)")
    ap.add_argument("--repeats", type=int, default=1, help="haystacks per (length, depth)")
    ap.add_argument("--types", type=_names(TYPES), default=list(TYPES), help="question types")
    ap.add_argument("--modes", type=_names(MODES), default=[m for m in MODES if m != "adaptive"],
                    help="modes, comma-separated (adaptive: only when named)")
    ap.add_argument("--top-k", type=int, default=3, help="chunks the oracle re-loads at L (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="haystack seed (0: the README's figures)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="longest answer, in tokens")
    ap.add_argument("--needle-seconds", type=float, default=3.0, help="how long each needle is visible (1-10)")
    ap.add_argument("--gap-seconds", type=float, default=1.0, help="gap between needles in the cluster")
    ap.add_argument("--max-context", type=int, default=0,
                    help="treat the LLM's context window as this many positions (default: its "
                         "max_position_embeddings); modes that need more are skipped as 'does not fit'")
    store_args(ap, "needle", videos="haystack videos")
    ap.add_argument("--png", type=Path, default=None, help="heatmap (default: --out with .png)")
    ap.add_argument("--md", type=Path, default=None, help="markdown table (default: --out with .md)")
    args = ap.parse_args(argv)
    if any(not 0 < d < 1 for d in args.depths):
        ap.error("depths must lie strictly between 0 and 1")
    if any(n < 1 for n in args.lengths) or args.repeats < 1 or args.top_k < 0:
        ap.error("lengths and repeats must be >= 1, top-k >= 0")
    if not 1 <= args.needle_seconds <= 10:
        ap.error("--needle-seconds must be 1-10 (TOYWORLD events last 1-10 s)")
    try:
        result = run(args)
    except ValueError as e:
        print(f"videokv bench needle: {e}", file=sys.stderr)
        return 2
    png = args.png or args.out.with_suffix(".png")
    md = args.md or args.out.with_suffix(".md")
    result["outputs"] = {"json": str(args.out), "png": str(png), "md": str(md)}
    _write(result, args)
    heatmap(result, png)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(markdown(result))
    print()
    print(side_by_side(result))
    t = result["timing"]
    rate = f" at {t['ingest_frames_per_s']:.1f} frames/s" if t["ingest_frames_per_s"] else ""
    print(f"\n{len(result['haystacks'])} haystacks in {t['total_s']:.0f} s (render {t['render_s']:.0f} s, ingest "
          f"{t['ingest_s_this_run']:.0f} s{rate}, ask {t['ask_s']:.0f} s for {t['answers']} answers)")
    print(f"wrote {args.out}, {png}, {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
