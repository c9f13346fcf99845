"""`videokv bench service --shards N`: ingest throughput of a sharded service with 1 and N
shards, side by side in one run, and what an upload costs through the front API.

Each phase starts its own redis-server, a front API (`videokv serve --front`) and, per shard,
the processes a shard host runs: its API (`videokv serve --shard`), a Celery worker
(`videokv worker --shard`) and a query worker, each shard over its own home. The same --videos
toy videos are uploaded through the front (placement spreads them) and the clock runs from
the first upload to the last video READY: videos/min.

The machine's cores are split evenly between the shards' ingest workers (torch threads), so
the phases have the same compute: on one machine the ratio measures the overhead of sharding
(front hop, placement, more processes), not scaling, which needs the shards on their own
hosts.

Upload cost: one --upload-mb file (a valid video: raw frames in AVI, made by ffmpeg)
posted straight to a shard's API and through the front (received, hashed and staged there,
then streamed to the shard), best of --repeats each; seconds, MB/s, the ratio, and the
front's peak RSS (it never holds the file in memory).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._common import machine, write_outputs
from ._services import HOST, Services, free_port, wait_until

TOKEN = secrets.token_hex(16)


def cluster(svc: Services, phase: str, shards: int, threads: int) -> dict:
    """A redis-server, a front API and `shards` shards; returns {front, redis_url, shards}."""
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
        svc.spawn([sys.executable, "-m", "videokv.cli", "worker", "--shard", name], f"worker-{name}",
                  OMP_NUM_THREADS=str(threads), **env)
        svc.spawn([sys.executable, "-m", "videokv.cli", "query-worker", "--shard", name], f"query-worker-{name}", **env)
        out["shards"][name] = {"url": f"http://{HOST}:{port}", "api": api}
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


def ingest_rate(client, c: dict, paths: list[Path], timeout: float) -> dict:
    t0 = time.perf_counter()
    placed = {}
    for p in paths:
        r = client.post(c["url"] + "/v1/videos", files={"file": (p.name, p.read_bytes(), "video/mp4")})
        if r.status_code not in (200, 202):
            raise RuntimeError(f"upload {p.name}: {r.status_code} {r.text[:300]}")
        placed[r.json()["id"]] = r.json()["shard"]
    for vid in placed:
        wait_until(lambda: client.get(f"{c['url']}/v1/videos/{vid}").json()["status"] == "READY", timeout, f"video {vid}")
    wall = time.perf_counter() - t0
    per_shard = {s: sum(1 for x in placed.values() if x == s) for s in c["shards"]}
    return {"videos": len(paths), "wall_s": round(wall, 2), "videos_per_min": round(len(paths) / wall * 60, 2),
            "per_shard": per_shard}


def make_big_video(path: Path, mb: int) -> None:
    """A valid video of about `mb` MB: raw 1280x720 YUV 4:2:0 frames (1.3 MiB each) in AVI."""
    frames = max(1, (mb << 20) // (1280 * 720 * 3 // 2))
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=1280x720:rate=30",
                    "-frames:v", str(frames), "-c:v", "rawvideo", "-pix_fmt", "yuv420p", str(path)], check=True)


def upload_cost(client, c: dict, path: Path, repeats: int) -> dict:
    """Seconds to post `path` straight to a shard's API and through the front, best of `repeats`."""
    shard = next(iter(c["shards"].values()))
    headers = {"X-Videokv-Tenant": "default", "X-Videokv-Cluster-Token": TOKEN}
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
    for _ in range(repeats):
        direct.append(post(shard["url"], headers))
        front.append(post(c["url"], {}))
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
    ap.add_argument("--minutes", type=float, default=0.5, help="length of each toy video (default 0.5)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="torch threads split over the shards")
    ap.add_argument("--upload-mb", type=int, default=1024, help="size of the upload-cost file, MB (0: skip)")
    ap.add_argument("--repeats", type=int, default=2, help="upload-cost repeats, best kept (default 2)")
    ap.add_argument("--timeout", type=float, default=1800, help="bound per phase in seconds")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir, removed)")
    ap.add_argument("--json", action="store_true", help="print the JSON result")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_shards.json"), help="JSON result")
    args = ap.parse_args(argv)
    import httpx

    from videokv.toyworld.synth import render_video

    t_start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="videokv-bench-shards-")) if args.dir is None else args.dir
    work.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "VIDEOKV_AUTH": "open", "VIDEOKV_DEVICE": os.environ.get("VIDEOKV_DEVICE", "cpu"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    result: dict = {"failed": 0, "errors": []}
    client = httpx.Client(timeout=httpx.Timeout(900.0, connect=10.0), trust_env=False)
    try:
        (work / "videos").mkdir(exist_ok=True)
        paths = [work / "videos" / f"toy{i}.mp4" for i in range(args.videos)]
        for i, p in enumerate(paths):
            render_video(p, args.minutes, 2, 500 + i, size=(160, 120))
        phases = {}
        for n in (1, args.shards):
            svc = Services(work, env)
            try:
                c = cluster(svc, f"s{n}x", n, max(1, args.cores // n))
                _ready(client, c, n)
                phases[str(n)] = ingest_rate(client, c, paths, args.timeout)
                print(f"[shards] {n} shard(s): {phases[str(n)]}", flush=True)
                if n == args.shards and args.upload_mb:
                    big = work / "big.avi"
                    make_big_video(big, args.upload_mb)
                    result["upload"] = upload_cost(client, c, big, args.repeats)
                    big.unlink()
                    print(f"[shards] upload: {result['upload']}", flush=True)
            finally:
                svc.stop()
        result.update(phases=phases, failed=0, ratio=round(phases[str(args.shards)]["videos_per_min"]
                                                          / phases["1"]["videos_per_min"], 3))
    except Exception as e:
        result = {"failed": -1, "errors": [f"{type(e).__name__}: {e}"], "logs": str(work)}
    finally:
        client.close()
    result.update(total_s=round(time.monotonic() - t_start, 2), machine=machine(env["VIDEOKV_DEVICE"]),
                  config={"shards": args.shards, "videos": args.videos, "video_minutes": args.minutes,
                          "cores": args.cores, "upload_mb": args.upload_mb})
    result["targets"] = {}
    if args.dir is None and result.get("failed") == 0:
        shutil.rmtree(work, ignore_errors=True)
    if "phases" in result:
        write_outputs(result, args.out, None, plot, markdown, markdown)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"failed: {result['errors']} (logs in {work})", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=1))
    return 0 if result["failed"] == 0 else 1


def markdown(r: dict) -> str:
    lines = ["| shards | videos | wall s | videos/min | per shard |", "|---|---|---|---|---|"]
    for n, p in r["phases"].items():
        lines.append(f"| {n} | {p['videos']} | {p['wall_s']} | {p['videos_per_min']} | "
                     f"{', '.join(f'{k}: {v}' for k, v in p['per_shard'].items())} |")
    n = r["config"]["shards"]
    lines.append(f"\n{n} shards / 1 shard: {r['ratio']}x (one machine, its cores split between the shards: "
                 "this is the overhead of sharding, not scaling)")
    u = r.get("upload")
    if u:
        lines.append(f"\nupload of {u['bytes'] / 1e9:.2f} GB on loopback: straight to a shard {u['direct_s']} s "
                     f"({u['direct_mb_s']} MB/s), through the front {u['front_s']} s ({u['front_mb_s']} MB/s): "
                     f"{u['front_over_direct']}x, +{u['front_extra_s']} s; front peak RSS {u['front_peak_rss_mb']} MB")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (640, 320), "white")
    d = ImageDraw.Draw(img)
    items = [(f"{n} shard(s)", p["videos_per_min"]) for n, p in r["phases"].items()]
    top = max(v for _, v in items) or 1
    d.text((20, 10), "ingest throughput (videos/min), one machine", fill="black")
    for i, (label, v) in enumerate(items):
        y = 60 + i * 80
        d.rectangle((160, y, 160 + int(420 * v / top), y + 40), fill=(70, 110, 200))
        d.text((20, y + 14), label, fill="black")
        d.text((170 + int(420 * v / top), y + 14), f"{v}", fill="black")
    img.save(path)
