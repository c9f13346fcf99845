"""`videokv bench service --shards N`: ingest throughput of a sharded service with 1 and N
shards, side by side in one run, and what an upload costs through the front API.

Each phase starts its own redis-server, a front API (`videokv serve --front`) and, per shard,
the processes a shard host runs: its API (`videokv serve --shard`), a Celery worker
(`videokv worker --shard`) and a query worker, each shard over its own home. The same --videos
toy videos are uploaded through the front (placement spreads them) and the clock runs from
the first upload to the last video READY: videos/min. Before the clock, every ingest worker
process gets one small video of its own (it loads the model on its first task).

The machine's cores are split evenly between the shards' ingest workers (torch threads), so
the phases have the same compute; a third phase runs 1 shard with as many ingest worker
processes as the N shards have, so that the last ratio isolates sharding itself (front hop,
placement, more registries) from process-level parallelism. On one machine these ratios
measure overhead, not scaling, which needs the shards on their own hosts.

Upload cost: one --upload-mb file (a valid video: raw frames in AVI, made by ffmpeg)
posted straight to a shard's API and through the front (placed by its first 4 MiB, then
streamed through to the shard), best of --repeats each, with the ingest workers stopped (the
upload's own ingest would compete); seconds, MB/s, the ratio, and the front's peak RSS (it
never holds the file in memory or on disk).
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from ._common import machine
from ._services import HOST, Services, finish, free_port, process_env, stop_process, wait_until, work_dir

TOKEN = secrets.token_hex(16)


def cluster(svc: Services, phase: str, shards: int, threads: int, processes: int = 1) -> dict:
    """A redis-server, a front API and `shards` shards, each with `processes` ingest worker
    processes of `threads` torch threads; returns {front, url, redis_url, shards}."""
    redis_url = svc.redis(f"redis-{phase}")
    common = {"VIDEOKV_REDIS_URL": redis_url, "VIDEOKV_CLUSTER_TOKEN": TOKEN}
    out = {"redis_url": redis_url, "shards": {}}
    for i in range(shards):
        name = f"{phase}{i}"
        port = free_port()
        env = {**common, "VIDEOKV_SHARD": name, "VIDEOKV_SHARD_URL": f"http://{HOST}:{port}",
               "VIDEOKV_HOME": str(svc.work / f"home-{name}")}
        api = svc.spawn([sys.executable, "-m", "uvicorn", "videokv.services:api_app", "--factory", "--host", HOST,
                         "--port", str(port), "--log-level", "warning"], f"api-{name}", **env)
        worker = svc.spawn([sys.executable, "-m", "videokv.cli", "worker", "--shard", name, "--concurrency",
                            str(processes)], f"worker-{name}",
                  OMP_NUM_THREADS=str(threads), **env)
        svc.spawn([sys.executable, "-m", "videokv.cli", "query-worker", "--shard", name], f"query-worker-{name}", **env)
        out["shards"][name] = {"url": f"http://{HOST}:{port}", "api": api, "worker": worker}
    port = free_port()
    out["front"] = svc.spawn([sys.executable, "-m", "uvicorn", "videokv.services:front_app", "--factory", "--host", HOST,
                              "--port", str(port), "--log-level", "warning"], f"front-{phase}", **common,
                             VIDEOKV_HOME=str(svc.work / f"home-front-{phase}"))
    out["url"] = f"http://{HOST}:{port}"
    return out


def _ready(client, c: dict, shards: int) -> None:
    def up():
        r = client.get(c["url"] + "/readyz").json()
        return sum(s["status"] == "up" and s["query_workers"] > 0 and s["workers"] > 0 for s in r["shards"]) == shards
    wait_until(up, 300, "cluster ready", c["front"])


def ingest_rate(client, c: dict, paths: list[Path], timeout: float, auth: dict | None = None) -> dict:
    """Upload `paths` through the front (auth: the caller's headers; none with open auth),
    wait for all READY: videos/min and where they were placed."""
    t0 = time.perf_counter()
    placed = {}
    for p in paths:
        r = client.post(c["url"] + "/v1/videos", files={"file": (p.name, p.read_bytes(), "video/mp4")},
                        headers=auth or {})
        if r.status_code not in (200, 202):
            raise RuntimeError(f"upload {p.name}: {r.status_code} {r.text[:300]}")
        placed[r.json()["id"]] = r.json()["shard"]
    for vid in placed:
        wait_until(lambda: client.get(f"{c['url']}/v1/videos/{vid}", headers=auth or {}).json()["status"] == "READY",
                   timeout, f"video {vid}")
    wall = time.perf_counter() - t0
    per_shard = {s: sum(1 for x in placed.values() if x == s) for s in c["shards"]}
    return {"videos": len(paths), "wall_s": round(wall, 2), "videos_per_min": round(len(paths) / wall * 60, 2),
            "per_shard": per_shard}


def warm_up(client, c: dict, procs: int, videos: Path, timeout: float) -> None:
    """Each ingest worker process loads the model on its first task: give every process of
    every shard one small video first (straight to the shard's API), outside the clock."""
    from videokv.toyworld.synth import render_video
    headers = {"X-Videokv-Tenant": "warmup", "X-Videokv-Cluster-Token": TOKEN}
    pending = []
    for i, shard in enumerate(c["shards"].values()):
        for j in range(procs):
            p = videos / f"warm{i}-{j}.mp4"
            if not p.exists():
                render_video(p, 0.1, 1, 900 + 10 * i + j, size=(160, 120))
            r = client.post(shard["url"] + "/v1/videos", files={"file": (p.name, p.read_bytes())}, headers=headers)
            if r.status_code not in (200, 202):
                raise RuntimeError(f"warm-up upload: {r.status_code} {r.text[:300]}")
            pending.append((shard["url"], r.json()["id"]))
    for url, vid in pending:
        wait_until(lambda: client.get(f"{url}/v1/videos/{vid}", headers=headers).json()["status"] == "READY",
                   timeout, f"warm-up video {vid}")


def make_big_video(path: Path, mb: int) -> None:
    """A valid video of about `mb` MB: raw 1280x720 YUV 4:2:0 frames (1.3 MiB each) in AVI."""
    frames = max(1, (mb << 20) // (1280 * 720 * 3 // 2))
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=1280x720:rate=30",
                    "-frames:v", str(frames), "-c:v", "rawvideo", "-pix_fmt", "yuv420p", str(path)], check=True)


def upload_cost(client, c: dict, path: Path, repeats: int, token: str = TOKEN, tenant: str = "default",
                auth: dict | None = None) -> dict:
    """Seconds to post `path` straight to a shard's API (as `tenant`, with the cluster token)
    and through the front (with `auth`, if keys are on), best of `repeats`."""
    shard = next(iter(c["shards"].values()))
    headers = {"X-Videokv-Tenant": tenant, "X-Videokv-Cluster-Token": token}
    size = path.stat().st_size

    def post(url: str, h: dict) -> float:
        with open(path, "rb") as fh:
            t = time.perf_counter()
            r = client.post(url + "/v1/videos", files={"file": (path.name, fh, "video/x-msvideo")}, headers=h)
            dt = time.perf_counter() - t
        if r.status_code not in (200, 202):
            raise RuntimeError(f"upload of {size >> 20} MiB: {r.status_code} {r.text[:300]}")
        return dt

    direct, front = [], []
    for i in range(repeats):                    # alternating which goes first
        for way in (("direct", "front") if i % 2 == 0 else ("front", "direct")):
            if way == "direct":
                direct.append(post(shard["url"], headers))
            else:
                front.append(post(c["url"], auth or {}))
    d, f = min(direct), min(front)
    hwm = _vm_hwm_mb(c["front"].pid)
    return {"bytes": size, "direct_s": round(d, 3), "front_s": round(f, 3), "direct_mb_s": round(size / d / 1e6, 1),
            "front_mb_s": round(size / f / 1e6, 1), "front_over_direct": round(f / d, 2),
            "front_extra_s": round(f - d, 3), "front_peak_rss_mb": hwm, "repeats": repeats}


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv bench service --shards N", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=2, help="shards of the second phase (the first has 1)")
    ap.add_argument("--videos", type=int, default=8, help="toy videos ingested per phase (default 8)")
    ap.add_argument("--minutes", type=float, default=2.0, help="length of each toy video (default 2)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="torch threads split over the shards")
    ap.add_argument("--no-same-processes", dest="same_processes", action="store_false",
                    help="skip the phase of 1 shard with as many worker processes as N shards have")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="measure from cold worker processes (model loads on the clock)")
    ap.add_argument("--upload-mb", type=int, default=1024, help="size of the upload-cost file, MB (0: skip)")
    ap.add_argument("--repeats", type=int, default=3, help="upload-cost repeats, best kept (default 3)")
    ap.add_argument("--timeout", type=float, default=1800, help="bound per phase in seconds")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir, removed)")
    ap.add_argument("--json", action="store_true", help="print the JSON result")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_shards.json"), help="JSON result")
    args = ap.parse_args(argv)
    import httpx

    from videokv.toyworld.synth import render_video

    t_start = time.monotonic()
    work = work_dir(args.dir, "videokv-bench-shards-")
    env = process_env()
    result: dict = {"failed": 0, "errors": []}
    client = httpx.Client(timeout=httpx.Timeout(900.0, connect=10.0), trust_env=False)
    try:
        (work / "videos").mkdir(exist_ok=True)
        paths = [work / "videos" / f"toy{i}.mp4" for i in range(args.videos)]
        for i, p in enumerate(paths):
            render_video(p, args.minutes, 2, 500 + i, size=(160, 120))
        phases = {}
        n = args.shards
        # (label, shards, worker processes per shard); the cores are split over all processes.
        arms = [("1", 1, 1)] + ([(f"1x{n}proc", 1, n)] if args.same_processes else []) + [(str(n), n, 1)]
        for label, shards, procs in arms:
            svc = Services(work, env)
            try:
                c = cluster(svc, f"p{len(phases)}s", shards, max(1, args.cores // (shards * procs)), procs)
                _ready(client, c, shards)
                if args.warmup:
                    warm_up(client, c, procs, work / "videos", args.timeout)
                phases[label] = {**ingest_rate(client, c, paths, args.timeout), "shards": shards,
                                 "worker_processes": shards * procs}
                print(f"[shards] {label}: {phases[label]}", flush=True)
                if shards == n and args.upload_mb:
                    for sh in c["shards"].values():       # no ingest competes with the uploads
                        stop_process(sh["worker"])
                    big = work / "big.avi"
                    make_big_video(big, args.upload_mb)
                    result["upload"] = upload_cost(client, c, big, args.repeats)
                    big.unlink()
                    print(f"[shards] upload: {result['upload']}", flush=True)
            finally:
                svc.stop()
        rate = {k: p["videos_per_min"] for k, p in phases.items()}
        result.update(phases=phases, failed=0, ratio=round(rate[str(n)] / rate["1"], 3))
        if args.same_processes:
            result["ratio_same_processes"] = round(rate[str(n)] / rate[f"1x{n}proc"], 3)
    except Exception as e:
        result = {"failed": -1, "errors": [f"{type(e).__name__}: {e}"], "logs": str(work)}
    finally:
        client.close()
    result.update(total_s=round(time.monotonic() - t_start, 2), machine=machine(env["VIDEOKV_DEVICE"]),
                  config={"shards": args.shards, "videos": args.videos, "video_minutes": args.minutes,
                          "cores": args.cores, "upload_mb": args.upload_mb})
    result["targets"] = {}
    return finish(result, args, work, "phases", plot, markdown)


def markdown(r: dict) -> str:
    lines = ["| shards | ingest worker processes | videos | wall s | videos/min | per shard |",
             "|---|---|---|---|---|---|"]
    for p in r["phases"].values():
        lines.append(f"| {p['shards']} | {p['worker_processes']} | {p['videos']} | {p['wall_s']} | {p['videos_per_min']} | "
                     f"{', '.join(f'{k}: {v}' for k, v in p['per_shard'].items())} |")
    n = r["config"]["shards"]
    same = (f"; against 1 shard with as many worker processes: {r['ratio_same_processes']}x"
            if "ratio_same_processes" in r else "")
    lines.append(f"\n{n} shards / 1 shard: {r['ratio']}x{same} (one machine, its cores split over the processes: "
                 "the overhead of sharding, not scaling)")
    u = r.get("upload")
    if u:
        lines.append(f"\nupload of {u['bytes'] / 1e9:.2f} GB on loopback: straight to a shard {u['direct_s']} s "
                     f"({u['direct_mb_s']} MB/s), through the front {u['front_s']} s ({u['front_mb_s']} MB/s): "
                     f"{u['front_over_direct']}x, +{u['front_extra_s']} s; front peak RSS {u['front_peak_rss_mb']} MB")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (680, 320), "white")
    d = ImageDraw.Draw(img)
    items = [(f"{p['shards']} shard(s), {p['worker_processes']} proc", p["videos_per_min"])
             for p in r["phases"].values()]
    top = max(v for _, v in items) or 1
    d.text((20, 10), "ingest throughput (videos/min), one machine", fill="black")
    for i, (label, v) in enumerate(items):
        y = 60 + i * 80
        d.rectangle((160, y, 160 + int(420 * v / top), y + 40), fill=(70, 110, 200))
        d.text((20, y + 14), label, fill="black")
        d.text((170 + int(420 * v / top), y + 14), f"{v}", fill="black")
    img.save(path)
