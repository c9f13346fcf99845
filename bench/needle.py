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

What "needle at depth d" means per question type: bench/_haystack.py.

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
import os
import sys
import time
from pathlib import Path

import numpy as np

from videokv.query.engine import ContextTooLong

from ._common import SIZE, floats, ints, log, mean, rounded, write_json
from ._haystack import TYPES, haystack_seed, make_haystack
from ._needle_report import heatmap, markdown, side_by_side, summarize

MODES = ("dense", "sparse", "bilevel", "bilevel-random", "adaptive")
TENANT = "bench-needle"


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


# ----------------------------------------------------------------------------- main

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
            log(t0, "needle", f"  ingest {label}: {done}/{total} chunks")
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
    log(t0, "needle", f"model {settings.model} loaded ({be.num_layers} layers, vision {be.vision.identity}); store "
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
        log(t0, "needle", f"haystack {label}: " + (f"reused {path.name}" if reused_video else
                                           f"rendered {path.name} in {render_s:.1f} s"))
        res = rt.pipeline.ingest(path, tenant=TENANT, progress=_progress(t0, label))
        key = f"{res.video_id}:{cfg['fingerprint']}"
        if not res.deduplicated and res.chunks_prefilled == res.chunks_total:
            ingest_times[key] = {"seconds": res.seconds, "frames": res.frames}
            args.workdir.mkdir(parents=True, exist_ok=True)
            times_path.write_text(json.dumps(ingest_times, indent=1) + "\n")
        prior = ingest_times.get(key, {})
        ingest_s = res.seconds if not res.deduplicated else prior.get("seconds")
        log(t0, "needle", f"  ingest {label}: " + (f"deduplicated (video {res.video_id}, stored {res.chunks_total} chunks"
                                          + (f", first ingest took {ingest_s:.1f} s)" if ingest_s else ")")
                                          if res.deduplicated else
                                          f"{res.chunks_prefilled} chunks in {res.seconds:.1f} s "
                                          f"({res.frames_per_s:.1f} frames/s) as {res.video_id}"))
        if res.frames != n:
            log(t0, "needle", f"  warning: {res.frames} frames sampled, expected {n}")
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
            "ingest_s": rounded(ingest_s, 2),
            "ingest_frames_per_s": rounded(res.frames / ingest_s, 2) if ingest_s else None,
            "ask_s": round(ask_s, 2), "dense_context_tokens": dense_tokens,
            "dense_kv_bytes": rows[0]["dense_kv_bytes"] if rows else None,
            "needles": [{k: e[k] for k in ("id", "name", "digit", "t_start", "t_end", "depth")}
                        for e in truth["events"]],
        })
        result["questions"] += rows
        acc = {m: sum(1 for x in rows if x["results"].get(m, {}).get("correct")) for m in args.modes}
        ran = {m: sum(1 for x in rows if "correct" in x["results"].get(m, {})) for m in args.modes}
        asks = sum(ran.values())
        log(t0, "needle", f"  asked {len(rows)} questions x {len(args.modes)} modes in {ask_s:.1f} s"
                 + (f" ({ask_s / asks:.2f} s/answer)" if asks else "") + "; right: "
                 + ", ".join(f"{m} {acc[m]}/{ran[m]}" if ran[m] else f"{m} does not fit" for m in args.modes)
                 + f"; oracle recall {sum(x['recall_at_k'] for x in rows)}/{len(rows)}")
        result["summary"] = summarize(result["questions"], args.modes, sorted(args.lengths), args.depths, args.types)
        write_json(args.out, result)
    fresh = [h for h in result["haystacks"] if not h["reused_ingest"]]
    answers = [x for r in result["questions"] for x in r["results"].values() if "wall_s" in x]
    result["timing"] = {
        "total_s": round(time.perf_counter() - t0, 2),
        "render_s": round(sum(h["render_s"] for h in result["haystacks"]), 2),
        "ingest_s_this_run": round(sum(h["ingest_s"] or 0 for h in fresh), 2),
        "ingest_frames_per_s": rounded(sum(h["frames"] for h in fresh) / sum(h["ingest_s"] for h in fresh), 2)
        if fresh else None,
        "ask_s": round(sum(h["ask_s"] for h in result["haystacks"]), 2),
        "answers": len(answers),
        "s_per_answer": {m: rounded(mean([x["wall_s"] for r in result["questions"]
                                          for mm, x in r["results"].items() if mm == m and "wall_s" in x]), 3)
                         for m in args.modes},
    }
    result["partial"] = False
    return result


def main(argv: list[str]) -> int:
    from ._common import store_args

    ap = argparse.ArgumentParser(prog="videokv bench needle", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See bench/_haystack.py's docstring for what depth means per question type.")
    ap.add_argument("--lengths", type=ints, default=[64, 256, 1024, 4096], help="haystack sizes in sampled frames")
    ap.add_argument("--depths", type=floats, default=[0.1, 0.3, 0.5, 0.7, 0.9], help="needle depths (0-1)")
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
    write_json(args.out, result)
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
