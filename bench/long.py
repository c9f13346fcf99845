"""`videokv bench long`: hours of footage, end to end. Toy-world haystacks of --hours (1, 4 and 10
by default; 24 works) at 1 fps, each with a needle cluster at 5 depths (bench/_longstack.py);
in one run:

  ingest    each haystack by `videokv ingest FILE --json` in its own process (streaming ingest
            at full sampling): frames, frames/s, frames per CPU-second (robust to a noisy
            machine) and the ingest process's peak RSS, against length;
  questions every question (retrieval, attribute, temporal, ordering, counting; counting by the
            service's default, the span counter) asked of every haystack with each context
            budget policy (--policies: pyramid, the default, and drop), the haystack's hot set
            warm: answer and correctness, TTFT and retrieval time, context tokens, the levels
            used and KV bytes paged;
  retrieval per-video search over 10^3..10^5 chunks (one FAISS index, as the store keeps it):
            milliseconds for the top-k and for a full ranking (what a budgeted question reads).

Outputs: --out JSON (default runs/bench_long.json; rewritten as it goes), a PNG and a markdown
table next to it; the targets of issue 22 are checked and printed. Videos and the store live in
--workdir and are reused: a re-run renders and ingests nothing it has (ingest figures are kept
from the first run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import _longstack as stack
from ._common import bench_settings, floats, log, machine, mean, median, rounded, write_json, write_outputs

TAG = "long"
TENANT = "bench-long"
TYPES = ("retrieval", "attribute", "temporal", "ordering", "counting")


# ----------------------------------------------------------------------------- ingest

def ingest(path: Path, home: Path, threads: int, cache: dict) -> dict:
    """`videokv ingest --json` of one haystack in a child process; its JSON plus CPU seconds.
    A video already stored (same bytes, same model) is not ingested again: its figures come
    from `cache` (the first run's)."""
    env = dict(os.environ, VIDEOKV_HOME=str(home))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "videokv.cli", "ingest", "--json", "--quiet", "--tenant", TENANT,
                        str(path)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"videokv bench long: ingest of {path.name} failed: {p.stderr.strip()[-2000:]}")
    out = json.loads(p.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.get("deduplicated") and path.name in cache:
        return {**cache[path.name], "reused": True}
    out.update({"wall_s": rounded(wall, 2), "cpu_s": rounded(cpu, 2),
                "frames_per_cpu_s": rounded(out["frames"] / cpu, 2) if cpu else None,
                "reused": bool(out.get("deduplicated"))})
    if not out["reused"]:
        cache[path.name] = out
    return out


# ----------------------------------------------------------------------------- asking

def ask_all(rt, video_id: str, truth: dict, policies: list[str], max_new_tokens: int) -> list[dict]:
    from videokv.toyworld.grading import evidence_hits, is_correct

    q = rt.queries
    rec = rt.store.get_video(video_id)
    spans = {s.index: (s.t_start, s.t_end) for s in rec.plan}
    rows = []
    for policy in policies:
        q.budget_policy = policy
        q.ask(video_id, truth["questions"][0]["question"], max_new_tokens=1, count_by="lm", when_by="lm")   # hot set warm
        for qa in truth["questions"]:
            ans = q.ask(video_id, qa["question"], max_new_tokens=max_new_tokens)
            cited = [{"t_start": spans[e.chunk][0], "t_end": spans[e.chunk][1]} for e in ans.evidence
                     if e.level in ("L", "count")]
            rows.append({"policy": policy, "type": qa["type"], "cluster": qa["cluster"], "depth": qa["needle_depth"],
                         "question": qa["question"], "expected": qa["answer"], "answer": ans.answer,
                         "correct": bool(is_correct(qa, ans.answer)),
                         "needle_in_l": bool(evidence_hits(qa, truth["events"], cited)),
                         "ttft_ms": ans.timings["ttft_ms"], "retrieve_ms": ans.timings["retrieve_ms"],
                         "load_ms": ans.timings["load_ms"], "context_tokens": ans.context_tokens,
                         "context_budget": ans.context_budget, "levels": ans.levels, "used": ans.policy,
                         "kv_bytes_loaded": ans.kv_bytes_loaded, "kv_bytes_read": ans.kv_bytes_read,
                         "answered_by": ans.extra.get("answered_by", "lm")})
    q.budget_policy = rt.settings.budget_policy
    return rows


# ----------------------------------------------------------------------------- retrieval

def retrieval_scale(sizes: list[int], dim: int = 384, videos: int = 4, repeat: int = 20) -> list[dict]:
    """Per-video search time in one FAISS index holding `videos` videos of n chunks each (the
    store's ChunkIndex, ids restricted to one video as a question does)."""
    from videokv.kvstore.index import ChunkIndex, faiss_id

    rng = np.random.default_rng(0)
    out = []
    for n in sizes:
        idx = ChunkIndex("bench@%d" % dim, dim, "bench")
        for s in range(1, videos + 1):
            v = rng.normal(size=(n, dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            idx._add([faiss_id(s, c) for c in range(n)], list(v))
        q = rng.normal(size=(1, dim)).astype(np.float32)
        row = {"chunks_per_video": n, "chunks_in_index": n * videos}
        for label, k in (("top3_ms", 3), ("full_ranking_ms", n)):
            idx.search(q, k, {2})
            ts = []
            for _ in range(repeat):
                t = time.perf_counter()
                idx.search(q, k, {2})
                ts.append((time.perf_counter() - t) * 1e3)
            row[label] = rounded(statistics.median(ts), 3)
        out.append(row)
    return out


# ----------------------------------------------------------------------------- summary

def summarize(lengths: list[dict], rows: list[dict], policies: list[str]) -> dict:
    out = {}
    for L in lengths:
        h = L["hours"]
        per = {}
        for p in policies:
            mine = [r for r in rows if r["hours"] == h and r["policy"] == p]
            acc = {t: rounded(sum(r["correct"] for r in mine if r["type"] == t)
                              / max(1, sum(r["type"] == t for r in mine)), 3) for t in TYPES}
            ra = [r for r in mine if r["type"] in ("retrieval", "attribute")]
            decoded = [r for r in mine if r["answered_by"] == "lm"]
            levels = {k: median([r["levels"][k] for r in decoded]) for k in ("L", "H", "G", "dropped")}
            per[p] = {"accuracy": acc,
                      "retrieval_attribute": rounded(sum(r["correct"] for r in ra) / max(1, len(ra)), 3),
                      "retrieval_attribute_n": len(ra),
                      "overall": rounded(sum(r["correct"] for r in mine) / max(1, len(mine)), 3),
                      "ttft_ms_median": rounded(median([r["ttft_ms"] for r in decoded]), 1),
                      "retrieve_ms_median": rounded(median([r["retrieve_ms"] for r in decoded]), 2),
                      "context_tokens_max": max((r["context_tokens"] for r in mine), default=0),
                      "context_tokens_median": median([r["context_tokens"] for r in decoded]),
                      "kv_mb_median": rounded((median([r["kv_bytes_loaded"] for r in decoded]) or 0) / 2**20, 1),
                      "levels_median": levels, "used": sorted({r["used"] for r in decoded})}
        out[f"{h:g}h"] = {"hours": h, "ingest": L["ingest"], "policies": per}
    return out


def targets(result: dict) -> dict:
    s = result["summary"]
    keys = sorted(s, key=lambda k: s[k]["hours"])
    if not keys:
        return {}
    one = s.get("1h") or s[keys[0]]
    ten = s.get("10h") or s[keys[-1]]
    p = result["config"]["default_policy"]
    ing1, ing10 = one["ingest"], ten["ingest"]
    t = {
        "frames_at_longest": {"value": ing10["frames"], "expected": int(round(ten["hours"] * 3600)),
                              "ok": ing10["frames"] == int(round(ten["hours"] * 3600))},
        "peak_rss_ratio": {"value": rounded(ing10["peak_rss_mb"] / ing1["peak_rss_mb"], 3), "max": 1.25},
        "frames_per_s_ratio": {"value": rounded(ing10["frames_per_s"] / ing1["frames_per_s"], 3), "min": 0.9},
        "frames_per_cpu_s_ratio": {"value": rounded(ing10["frames_per_cpu_s"] / ing1["frames_per_cpu_s"], 3)
                                   if ing1.get("frames_per_cpu_s") and ing10.get("frames_per_cpu_s") else None,
                                   "min": 0.9},
        "context_tokens_max": {"value": max(v["policies"][q]["context_tokens_max"] for v in s.values()
                                            for q in v["policies"]), "max": 8192},
        "retrieval_attribute_at_longest": {"value": ten["policies"][p]["retrieval_attribute"], "min": 0.9},
        "retrieval_attribute_drop_vs_shortest": {
            "value": rounded(100 * (one["policies"][p]["retrieval_attribute"]
                                    - ten["policies"][p]["retrieval_attribute"]), 1),
            "max_points": 5},
        "ttft_ratio": {"value": rounded(ten["policies"][p]["ttft_ms_median"] / one["policies"][p]["ttft_ms_median"], 3),
                       "max": 2.0},
    }
    for v in t.values():
        if "ok" not in v and v["value"] is not None:
            v["ok"] = (v["value"] <= v["max"]) if "max" in v else (v["value"] <= v["max_points"]) \
                if "max_points" in v else v["value"] >= v["min"]
    return t


def side_by_side(result: dict) -> str:
    pol = result["config"]["policies"]
    head = ["length", "frames", "ingest f/s", "f/CPU-s", "peak RSS"] + [
        f"{p} {x}" for p in pol for x in ("ret+attr", "all", "ctx max", "TTFT", "levels L/H/G/-")]
    lines = [" | ".join(head)]
    for k, v in sorted(result["summary"].items(), key=lambda kv: kv[1]["hours"]):
        i = v["ingest"]
        cells = [k, str(i["frames"]), f"{i['frames_per_s']:.1f}", str(i.get("frames_per_cpu_s")),
                 f"{i['peak_rss_mb']:.0f} MB"]
        for p in pol:
            x = v["policies"][p]
            lv = x["levels_median"]
            cells += [f"{x['retrieval_attribute']:.2f} ({x['retrieval_attribute_n']})", f"{x['overall']:.2f}",
                      str(x["context_tokens_max"]), f"{x['ttft_ms_median']:.0f} ms",
                      "/".join(str(int(lv[q])) if lv[q] is not None else "-" for q in ("L", "H", "G", "dropped"))]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def markdown(result: dict) -> str:
    pol = result["config"]["policies"]
    lines = ["| video | frames | ingest frames/s | frames / CPU-s | ingest peak RSS | policy | retrieval + attribute "
             "| retrieval / attribute / temporal / ordering / counting | context tokens (max) | levels L / H / G / "
             "dropped (median) | KV MB paged | TTFT | retrieve |",
             "|---:|---:|---:|---:|---:|---|---:|---|---:|---|---:|---:|---:|"]
    for k, v in sorted(result["summary"].items(), key=lambda kv: kv[1]["hours"]):
        i = v["ingest"]
        for j, p in enumerate(pol):
            x = v["policies"][p]
            acc = " / ".join(f"{x['accuracy'][t]:.0%}" for t in TYPES)
            lv = " / ".join(str(int(x["levels_median"][q])) if x["levels_median"][q] is not None else "-"
                            for q in ("L", "H", "G", "dropped"))
            first = [f"{v['hours']:g} h", f"{i['frames']:,}", f"{i['frames_per_s']:.1f}",
                     f"{i.get('frames_per_cpu_s') or '-'}", f"{i['peak_rss_mb']:.0f} MB"] if j == 0 else [""] * 5
            lines.append("| " + " | ".join(first + [p, f"{x['retrieval_attribute']:.0%} ({x['retrieval_attribute_n']})",
                                                    acc, f"{x['context_tokens_max']:,}", lv, f"{x['kv_mb_median']}",
                                                    f"{x['ttft_ms_median']:.0f} ms",
                                                    f"{x['retrieve_ms_median']:.1f} ms"]) + " |")
    rs = result.get("retrieval_scale", [])
    if rs:
        lines += ["", "| chunks per video | chunks in the index | top-3 search | full ranking |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['chunks_per_video']:,} | {r['chunks_in_index']:,} | {r['top3_ms']} ms | "
                  f"{r['full_ranking_ms']} ms |" for r in rs]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    from PIL import Image

    from ._common import line_chart

    s = sorted(result["summary"].values(), key=lambda v: v["hours"])
    pol = result["config"]["policies"]
    img = Image.new("RGB", (1500, 820), "white")
    hrs = [v["hours"] for v in s]
    line_chart(img, (0, 0, 500, 410), {"frames/s": list(zip(hrs, [v["ingest"]["frames_per_s"] for v in s])),
                                        "frames/CPU-s": list(zip(hrs, [v["ingest"].get("frames_per_cpu_s") for v in s]))},
               "Ingest speed", "hours", "frames/s")
    line_chart(img, (500, 0, 1000, 410), {"peak RSS": list(zip(hrs, [v["ingest"]["peak_rss_mb"] for v in s]))},
               "Ingest peak RSS", "hours", "MB")
    line_chart(img, (1000, 0, 1500, 410), {p: list(zip(hrs, [v["policies"][p]["context_tokens_max"] for v in s]))
                                            for p in pol} | {"8192 positions": [(hrs[0], 8192), (hrs[-1], 8192)]},
               "Context tokens (max)", "hours", "tokens")
    line_chart(img, (0, 410, 500, 820), {p: list(zip(hrs, [v["policies"][p]["ttft_ms_median"] for v in s]))
                                          for p in pol}, "TTFT (median)", "hours", "ms")
    line_chart(img, (500, 410, 1000, 820), {f"{p}": list(zip(hrs, [v["policies"][p]["retrieval_attribute"] for v in s]))
                                             for p in pol}, "Retrieval + attribute accuracy", "hours", "")
    line_chart(img, (1000, 410, 1500, 820), {f"{p}": list(zip(hrs, [v["policies"][p]["overall"] for v in s]))
                                              for p in pol}, "All question types", "hours", "")
    img.save(path)


# ----------------------------------------------------------------------------- run

def run(args) -> dict:
    import torch

    from videokv.runtime import Runtime

    t0 = time.perf_counter()
    home = args.workdir / "home"
    settings = bench_settings(args.threads, home)
    fps = float(settings.sample_fps)
    if fps != 1.0:
        raise SystemExit("videokv bench long: haystacks are rendered and sampled at 1 fps (VIDEOKV_SAMPLE_FPS=1)")
    if settings.max_frames is not None:
        raise SystemExit("videokv bench long: unset VIDEOKV_MAX_FRAMES; the bench measures full sampling")
    rt = Runtime(settings)
    chunk_seconds = settings.chunk_frames / fps
    cache_path = args.workdir / "ingests.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    cfg = {"hours": args.hours, "depths": args.depths, "repeats": args.repeats, "policies": args.policies,
           "default_policy": settings.budget_policy, "seed": args.seed, "max_new_tokens": args.max_new_tokens,
           "top_k": settings.top_k, "gist_chunks": settings.gist_chunks, "gist_ratio": settings.gist_ratio,
           "pyramid_open_groups": settings.pyramid_open_groups, "context_budget": settings.context_budget,
           "model": settings.model, "fingerprint": rt.config.fingerprint(), "torch_threads": torch.get_num_threads(),
           "workdir": str(args.workdir)}
    result = {"bench": "long", "partial": True, "config": cfg, "machine": machine(rt.backend.device),
              "lengths": [], "questions": []}
    videos = []
    for hours in args.hours:                          # render everything first: ingest then runs alone
        for r in range(args.repeats):
            path, truth, reused, secs = stack.make(args.workdir / "videos", hours, args.depths, r, args.seed, fps,
                                                   chunk_seconds)
            log(t0, TAG, f"{hours:g} h #{r}: " + (f"reused {path.name}" if reused else f"rendered in {secs:.0f} s"))
            videos.append((hours, r, path, truth))
    for hours, r, path, truth in videos:
        ing = ingest(path, home, args.threads, cache)
        write_json(cache_path, cache)
        log(t0, TAG, f"{hours:g} h #{r}: ingest {ing['frames']} frames at {ing['frames_per_s']} frames/s "
                     f"({ing.get('frames_per_cpu_s')} per CPU-s), peak RSS {ing['peak_rss_mb']} MB"
                     + (" (stored before: first run's figures)" if ing["reused"] else ""))
        t = time.perf_counter()
        rows = ask_all(rt, ing["video_id"], truth, args.policies, args.max_new_tokens)
        for row in rows:
            row.update({"hours": hours, "repeat": r})
        result["questions"] += rows
        result["lengths"].append({"hours": hours, "repeat": r, "video_id": ing["video_id"], "ingest": ing})
        rt.queries.forget(ing["video_id"])            # one long video's hot sets at a time
        right = {p: sum(x["correct"] for x in rows if x["policy"] == p) for p in args.policies}
        log(t0, TAG, f"  asked {len(rows)} in {time.perf_counter() - t:.0f} s; right: "
                     + ", ".join(f"{p} {right[p]}/{len(rows) // len(args.policies)}" for p in args.policies))
        write_json(args.out, result)
    merged = []
    for hours in args.hours:                          # repeats pooled per length (ingest: the mean)
        ings = [L["ingest"] for L in result["lengths"] if L["hours"] == hours]
        keys = ("frames", "frames_per_s", "frames_per_cpu_s", "peak_rss_mb", "wall_s")
        merged.append({"hours": hours, "ingest": {k: rounded(mean(i.get(k) for i in ings), 2) for k in keys}})
        merged[-1]["ingest"]["frames"] = int(ings[0]["frames"])
    result["summary"] = summarize(merged, result["questions"], args.policies)
    result["retrieval_scale"] = retrieval_scale(args.index_sizes)
    result["targets"] = targets(result)
    result["partial"] = False
    result["total_s"] = rounded(time.perf_counter() - t0, 1)
    return result


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv bench long", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=floats, default=[1.0, 4.0, 10.0], help="haystack lengths in hours (e.g. 1,4,10,24)")
    ap.add_argument("--depths", type=floats, default=[0.1, 0.3, 0.5, 0.7, 0.9], help="needle cluster depths (0-1, at most 5)")
    ap.add_argument("--repeats", type=int, default=2, help="haystacks per length (questions pooled)")
    ap.add_argument("--policies", type=lambda s: [x for x in s.split(",") if x], default=["pyramid", "drop"],
                    help="context budget policies to compare (pyramid, drop)")
    ap.add_argument("--seed", type=int, default=0, help="haystack seed (0: the README's figures)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="longest answer, in tokens")
    ap.add_argument("--index-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10000, 100000],
                    help="chunks per video for the retrieval-scale measurement")
    ap.add_argument("--threads", type=int, default=0, help="torch threads, here and in the ingest processes (0: default)")
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench_long"), help="videos and store (reused)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_long.json"), help="the JSON result")
    args = ap.parse_args(argv)
    bad = [p for p in args.policies if p not in ("pyramid", "drop")]
    if bad or not args.policies:
        ap.error(f"--policies: expected pyramid and/or drop, got {','.join(bad) or 'none'}")
    if any(h <= 0 for h in args.hours):
        ap.error("--hours must be positive")
    result = run(args)
    write_outputs(result, args.out, None, plot, markdown, side_by_side)
    return 0 if all(t.get("ok", True) for t in result["targets"].values()) else 1
