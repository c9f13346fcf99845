"""`videokv bench service`: the whole service under concurrent load, on this machine.

Starts its own redis-server (free port), one Celery worker process and a real uvicorn API
server on a free loopback port (VIDEOKV_AUTH=open, a temp VIDEOKV_HOME), uploads a small
toy video and waits for READY, then fires at the same time --queries concurrent questions
on that video and --uploads concurrent uploads of distinct small toy videos (each timed
from the start of its upload to READY). Every request must succeed. Prints p50/p99 of
query latency and of upload-to-READY, writes JSON to --out (`--json` prints it too) and
exits 1 if any request failed. Everything it started is stopped at the end.

Questions are answered in the API process one at a time (see docs/service.md), so the
query p99 grows with --queries; ingests run one at a time on the one worker process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"
QUESTIONS = ["What color is the ball?", "What happens at the start?", "How many objects are there?",
             "What moves to the left?", "When does something appear?"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait(pred, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return
        except Exception:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)       # the worker's pool children too
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def _pct(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    a = np.asarray(xs) * 1000
    return {"n": len(xs), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p99_ms": round(float(np.percentile(a, 99)), 1), "max_ms": round(float(a.max()), 1)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv bench service", description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=20, help="concurrent questions (default 20)")
    ap.add_argument("--uploads", type=int, default=3, help="concurrent uploads of distinct videos (default 3)")
    ap.add_argument("--minutes", type=float, default=0.25, help="length of each toy video (default 0.25)")
    ap.add_argument("--max-new-tokens", type=int, default=8, help="longest answer, in tokens")
    ap.add_argument("--timeout", type=float, default=210, help="overall bound in seconds (default 210)")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir, removed)")
    ap.add_argument("--json", action="store_true", help="print the JSON result")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_service.json"), help="JSON result")
    args = ap.parse_args(argv)
    import httpx

    from videokv.toyworld.synth import render_video

    t_start = time.monotonic()
    deadline = t_start + args.timeout
    left = lambda: max(1.0, deadline - time.monotonic())   # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="videokv-bench-service-")) if args.dir is None else args.dir
    work.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        redis_port, api_port = _free_port(), _free_port()
        redis_url = f"redis://{HOST}:{redis_port}/0"
        env = {**os.environ, "VIDEOKV_HOME": str(work / "home"), "VIDEOKV_REDIS_URL": redis_url,
               "VIDEOKV_AUTH": "open", "VIDEOKV_DEVICE": os.environ.get("VIDEOKV_DEVICE", "cpu"),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)

        def spawn(cmd, name):
            log = open(work / f"{name}.log", "ab")
            logs.append(log)
            p = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            procs.append(p)
            return p

        redis_exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        rp = spawn([redis_exe, "--port", str(redis_port), "--bind", HOST, "--save", "", "--appendonly", "yes",
                    "--dir", str(work)], "redis")
        import redis as redis_py
        _wait(lambda: redis_py.Redis(host=HOST, port=redis_port, socket_connect_timeout=0.2).ping(), 10,
              "redis-server", rp)
        wp = spawn([sys.executable, "-m", "celery", "-A", "videokv.services", "worker", "-Q", "ingest,query",
                    "-c", "1", "--pool=prefork", "--loglevel=INFO", "--without-gossip", "--without-mingle",
                    "--without-heartbeat", "-n", f"bench{os.getpid()}@%h"], "worker")
        apip = spawn([sys.executable, "-m", "uvicorn", "videokv.services:api_app", "--factory", "--host", HOST,
                      "--port", str(api_port), "--log-level", "warning"], "api")

        # Toy videos while the servers start.
        vids = work / "videos"
        vids.mkdir(exist_ok=True)
        paths = []
        for i in range(1 + args.uploads):
            p = vids / f"toy{i}.mp4"
            render_video(p, args.minutes, 1, 100 + i, size=(160, 120))
            paths.append(p)

        base = f"http://{HOST}:{api_port}"
        client = httpx.Client(base_url=base, timeout=httpx.Timeout(120.0, connect=10.0), trust_env=False,
                              limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
        _wait(lambda: client.get("/healthz").status_code == 200, left(), "API server", apip)
        t0 = time.monotonic()
        r = client.get("/readyz", timeout=left())        # loads the model in the API process
        if r.status_code != 200:
            raise RuntimeError(f"/readyz: {r.status_code} {r.text}")
        ready_s = time.monotonic() - t0

        def upload_until_ready(path: Path) -> float:
            t = time.monotonic()
            with open(path, "rb") as f:
                r = client.post("/v1/videos", files={"file": (path.name, f, "video/mp4")})
            if r.status_code != 202:
                raise RuntimeError(f"upload {path.name}: {r.status_code} {r.text[:300]}")
            vid = r.json()["id"]
            while True:
                if wp.poll() is not None:
                    raise RuntimeError("the worker exited")
                v = client.get(f"/v1/videos/{vid}").json()
                if v["status"] == "READY":
                    return time.monotonic() - t
                if v["status"] == "FAILED":
                    raise RuntimeError(f"video {vid} FAILED: {v.get('error')}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"video {vid} still {v['status']} at the deadline")
                time.sleep(0.1)

        t0 = time.monotonic()
        r = client.post("/v1/videos", files={"file": (paths[0].name, paths[0].read_bytes(), "video/mp4")})
        if r.status_code != 202:
            raise RuntimeError(f"warm-up upload: {r.status_code} {r.text[:300]}")
        warm_vid = r.json()["id"]
        _wait(lambda: client.get(f"/v1/videos/{warm_vid}").json()["status"] == "READY", left(),
              "warm-up video READY", wp)
        warm_ingest_s = time.monotonic() - t0

        def ask(i: int) -> float:
            t = time.monotonic()
            r = client.post(f"/v1/videos/{warm_vid}/query", json={"question": QUESTIONS[i % len(QUESTIONS)],
                                                                  "max_new_tokens": args.max_new_tokens})
            if r.status_code != 200:
                raise RuntimeError(f"query {i}: {r.status_code} {r.text[:300]}")
            if r.json().get("video_prefill_runs") != 0:
                raise RuntimeError(f"query {i}: ran a video prefill")
            return time.monotonic() - t

        n = args.queries + args.uploads
        gate = threading.Barrier(n)

        def gated(fn, x):
            gate.wait(30)
            return fn(x)

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=n) as pool:
            qf = [pool.submit(gated, ask, i) for i in range(args.queries)]
            uf = [pool.submit(gated, upload_until_ready, p) for p in paths[1:]]
            q_lat, u_lat, errors = [], [], []
            for lat, futs in ((q_lat, qf), (u_lat, uf)):
                for f in futs:
                    try:
                        lat.append(f.result(timeout=left()))
                    except Exception as e:
                        errors.append(f"{type(e).__name__}: {e}")
        load_s = time.monotonic() - t0
        client.close()
        result = {
            "queries": {**_pct(q_lat), "requested": args.queries, "ok": len(q_lat)},
            "uploads_to_ready": {**_pct(u_lat), "requested": args.uploads, "ok": len(u_lat)},
            "failed": len(errors), "errors": errors[:20],
            "load_wall_s": round(load_s, 2), "api_readyz_s": round(ready_s, 2),
            "warmup_ingest_s": round(warm_ingest_s, 2), "total_s": round(time.monotonic() - t_start, 2),
            "config": {"video_minutes": args.minutes, "size": [160, 120], "max_new_tokens": args.max_new_tokens,
                       "worker_processes": 1, "api_processes": 1, "cpus": os.cpu_count(),
                       "omp_threads": env["OMP_NUM_THREADS"], "device": env["VIDEOKV_DEVICE"]},
        }
    except Exception as e:
        result = {"failed": -1, "errors": [f"{type(e).__name__}: {e}"], "total_s": round(time.monotonic() - t_start, 2),
                  "logs": str(work)}
    finally:
        for p in reversed(procs):
            _stop(p)
        for log in logs:
            log.close()
    if args.dir is None and result.get("failed") == 0:
        shutil.rmtree(work, ignore_errors=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name in ("queries", "uploads_to_ready"):
            if name in result:
                s = result[name]
                print(f"{name:17s} ok {s['ok']}/{s['requested']}  p50 {s['p50_ms']} ms  p99 {s['p99_ms']} ms  "
                      f"max {s['max_ms']} ms")
        print(f"failed: {result['failed']}  total {result['total_s']} s  -> {args.out}")
        for e in result["errors"]:
            print(f"  error: {e}", file=sys.stderr)
    return 0 if result["failed"] == 0 else 1
