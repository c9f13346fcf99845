"""`videokv bench service`: questions/s and latency of the whole service under concurrent
load, batched query workers against one question at a time, side by side in one run.

Starts, on free loopback ports, a Celery worker (ingest) and two stacks over one
VIDEOKV_HOME, each its own redis-server, uvicorn API process and `videokv query-worker`:

    batched    the query worker decodes the questions in flight together (--max-batch)
    baseline   the same worker with batching off (--max-batch 1)

It uploads --videos toy videos and waits for READY, warms both stacks, then for each
--concurrency c asks each stack in turn: c clients, each posting --per-client questions one
after the other (mixed over the videos; answers of --max-new-tokens, decoded by the LM).
Per stack and c: questions/s (questions over the wall time), p50/p99 latency. Also
`api_hop_ms`: the median, at concurrency 1 on the batched stack, of a question's latency at
the client less the worker's own time for it (`timings.worker_ms`: from taking it off the
stream to its answer), i.e. the API -> worker -> API overhead over the in-process path.

`--shards N`: the sharded service instead, ingest throughput with 1 and N shards and the
upload's cost through the front API (bench/_shards.py).

Outputs: --out JSON (default runs/bench_service.json; `--json` prints it), a PNG and a
markdown table next to it; the targets of issue 23 are checked and printed; exit 1 when a
request failed. Everything it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ._common import line_chart, machine
from ._services import Services, finish, process_env, wait_until, work_dir

QUESTIONS = ["What digit was shown on the red card?", "What color was the first card?",
             "Which shape moved to the left?", "What happened at the end of the video?",
             "What was the last object to appear?", "Describe the scene at the start."]
STACKS = ("batched", "baseline")


def _pct(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1000
    return {"n": len(xs), "p50_ms": round(float(np.percentile(a, 50)), 1) if len(a) else None,
            "p99_ms": round(float(np.percentile(a, 99)), 1) if len(a) else None}


def _ready(client, stack: dict, timeout: float) -> None:
    wait_until(lambda: client.get(stack["url"] + "/readyz").status_code == 200, timeout, "stack ready", stack["worker"])


def _upload(client, url: str, paths: list[Path], timeout: float) -> list[str]:
    ids = []
    for p in paths:
        r = client.post(url + "/v1/videos", files={"file": (p.name, p.read_bytes(), "video/mp4")})
        if r.status_code not in (200, 202):
            raise RuntimeError(f"upload {p.name}: {r.status_code} {r.text[:300]}")
        ids.append(r.json()["id"])
    for vid in ids:
        wait_until(lambda: client.get(f"{url}/v1/videos/{vid}").json()["status"] == "READY", timeout, f"video {vid} READY")
    return ids


def load(client, url: str, vids: list[str], c: int, per_client: int, max_new_tokens: int) -> dict:
    """c clients, each asking per_client questions in turn; latencies, worker times, wall."""
    lat, worker_ms, errors = [], [], []
    gate = threading.Barrier(c)

    def one_client(k: int) -> None:
        gate.wait(60)
        for j in range(per_client):
            i = k * per_client + j
            t = time.perf_counter()
            r = client.post(f"{url}/v1/videos/{vids[i % len(vids)]}/query",
                            json={"question": QUESTIONS[i % len(QUESTIONS)], "max_new_tokens": max_new_tokens,
                                  "count_by": "lm", "when_by": "lm"})
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:200]}")
                continue
            lat.append(time.perf_counter() - t)
            worker_ms.append(r.json()["timings"].get("worker_ms"))

    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(c)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    hop = [lt * 1e3 - w for lt, w in zip(lat, worker_ms) if w is not None]
    return {**_pct(lat), "qps": round(len(lat) / wall, 3), "wall_s": round(wall, 2), "errors": errors,
            "hop_ms": round(float(np.median(hop)), 2) if hop else None}


def main(argv: list[str]) -> int:
    if any(a == "--shards" or a.startswith("--shards=") for a in argv):
        from ._shards import main as shards_main  # the sharded service (bench/_shards.py)
        return shards_main(argv)
    ap = argparse.ArgumentParser(prog="videokv bench service", description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32],
                    help="concurrent clients, each level measured on both stacks (default 1,8,32)")
    ap.add_argument("--per-client", type=int, default=0,
                    help="questions each client asks in turn (0: 12 at concurrency 1, else max(2, 64 / c))")
    ap.add_argument("--max-batch", type=int, default=32, help="the batched worker's VIDEOKV_QUERY_MAX_BATCH")
    ap.add_argument("--videos", type=int, default=2, help="toy videos asked about (default 2)")
    ap.add_argument("--minutes", type=float, default=0.5, help="length of each toy video (default 0.5)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="answer length, in tokens (default 32)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each query worker (default 2)")
    ap.add_argument("--timeout", type=float, default=1800, help="overall bound in seconds")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir, removed)")
    ap.add_argument("--json", action="store_true", help="print the JSON result")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_service.json"), help="JSON result")
    args = ap.parse_args(argv)
    import httpx

    from videokv.toyworld.synth import render_video

    t_start = time.monotonic()
    work = work_dir(args.dir, "videokv-bench-service-")
    env = process_env(VIDEOKV_HOME=str(work / "home"), VIDEOKV_MAX_QUEUED_QUESTIONS="256")
    svc = Services(work, env)
    result: dict = {"failed": 0, "errors": []}
    try:
        stacks = {"batched": svc.stack("batched", args.max_batch, args.threads),
                  "baseline": svc.stack("baseline", 1, args.threads)}
        svc.spawn([sys.executable, "-m", "celery", "-A", "videokv.services", "worker", "-Q", "ingest,query", "-c", "1",
                   "--pool=prefork", "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
                   "-n", f"bench{os.getpid()}@%h"], "ingest-worker", VIDEOKV_REDIS_URL=stacks["batched"]["redis_url"])
        (work / "videos").mkdir(exist_ok=True)
        paths = [work / "videos" / f"toy{i}.mp4" for i in range(args.videos)]
        for i, p in enumerate(paths):
            render_video(p, args.minutes, 2, 300 + i, size=(160, 120))
        client = httpx.Client(timeout=httpx.Timeout(600.0, connect=10.0), trust_env=False,
                              limits=httpx.Limits(max_connections=256, max_keepalive_connections=256))
        for s in stacks.values():
            _ready(client, s, 300)
        vids = _upload(client, stacks["batched"]["url"], paths, 600)
        for s in stacks.values():                         # warm: model pages, hot sets, both paths
            load(client, s["url"], vids, 2, 2, args.max_new_tokens)
        levels = {}
        for c in args.concurrency:
            per = args.per_client or (12 if c == 1 else max(2, 64 // c))
            levels[str(c)] = {name: load(client, s["url"], vids, c, per, args.max_new_tokens)
                              for name, s in stacks.items()}
            row = levels[str(c)]
            print(f"[service] c={c}: batched {row['batched']['qps']} q/s p99 {row['batched']['p99_ms']} ms; "
                  f"baseline {row['baseline']['qps']} q/s p99 {row['baseline']['p99_ms']} ms", flush=True)
        client.close()
        errors = [e for lv in levels.values() for r in lv.values() for e in r["errors"]]
        result = {"levels": levels, "failed": len(errors), "errors": errors[:20]}
        for c in args.concurrency:
            lv = levels[str(c)]
            result[f"batched_speedup_c{c}"] = round(lv["batched"]["qps"] / lv["baseline"]["qps"], 2)
        result["api_hop_ms"] = levels[str(args.concurrency[0])]["batched"]["hop_ms"]
    except Exception as e:
        result = {"failed": -1, "errors": [f"{type(e).__name__}: {e}"], "logs": str(work)}
    finally:
        svc.stop()
    result.update(total_s=round(time.monotonic() - t_start, 2), machine=machine(env["VIDEOKV_DEVICE"]),
                  config={"max_batch": args.max_batch, "max_new_tokens": args.max_new_tokens, "videos": args.videos,
                          "video_minutes": args.minutes, "worker_threads": args.threads,
                          "concurrency": args.concurrency})
    result["targets"] = targets(result)
    return finish(result, args, work, "levels", plot, markdown)


def targets(r: dict) -> dict:
    """Issue 23's targets, where this run measured them."""
    out = {}
    if "batched_speedup_c8" in r:
        out["batched_speedup_c8>=3"] = {"value": r["batched_speedup_c8"], "ok": r["batched_speedup_c8"] >= 3}
        lv = r["levels"]["8"]
        out["p99_c8<=baseline"] = {"value": [lv["batched"]["p99_ms"], lv["baseline"]["p99_ms"]],
                                   "ok": lv["batched"]["p99_ms"] <= lv["baseline"]["p99_ms"]}
    if r.get("api_hop_ms") is not None:
        out["api_hop_ms<=15"] = {"value": r["api_hop_ms"], "ok": r["api_hop_ms"] <= 15}
    return out


def markdown(r: dict) -> str:
    lines = ["| concurrency | batched q/s | baseline q/s | speedup | batched p50 / p99 ms | baseline p50 / p99 ms |",
             "|---|---|---|---|---|---|"]
    for c, lv in r["levels"].items():
        b, o = lv["batched"], lv["baseline"]
        lines.append(f"| {c} | {b['qps']} | {o['qps']} | {r[f'batched_speedup_c{c}']}x | {b['p50_ms']} / {b['p99_ms']} "
                     f"| {o['p50_ms']} / {o['p99_ms']} |")
    lines.append(f"\napi_hop_ms (API -> worker -> API over the worker's own time, c=1, median): {r['api_hop_ms']}")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    from PIL import Image
    img = Image.new("RGB", (900, 380), "white")
    cs = [int(c) for c in r["levels"]]
    line_chart(img, (0, 0, 450, 380), {s: [(c, r["levels"][str(c)][s]["qps"]) for c in cs] for s in STACKS},
               "questions/s", "concurrent clients", "", xlog=True)
    line_chart(img, (450, 0, 900, 380), {s: [(c, r["levels"][str(c)][s]["p99_ms"]) for c in cs] for s in STACKS},
               "p99 latency", "concurrent clients", "ms", xlog=True)
    img.save(path)
