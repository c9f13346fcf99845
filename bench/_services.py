"""Service processes for the service benchmarks: spawn each in its own session, wait for
it, stop them all (SIGTERM to the process group, then SIGKILL)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(pred, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
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


def stop_process(proc: subprocess.Popen | None, timeout: float = 40) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)       # a worker's pool children too
        proc.wait(timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class Services:
    """The processes of one run; spawn() starts one in its own session, stop() ends all."""

    def __init__(self, work: Path, env: dict):
        self.work, self.env, self.procs, self.logs = work, env, [], []
        self.root = str(Path(__file__).resolve().parent.parent)

    def spawn(self, cmd: list[str], name: str, **env) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "ab")
        self.logs.append(log)
        p = subprocess.Popen(cmd, env={**self.env, **env}, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def redis(self, name: str) -> str:
        import redis as redis_py
        port = free_port()
        p = self.spawn([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port), "--bind", HOST,
                        "--save", "", "--appendonly", "no", "--dir", str(self.work)], name)
        wait_until(lambda: redis_py.Redis(host=HOST, port=port, socket_connect_timeout=0.2).ping(), 10, name, p)
        return f"redis://{HOST}:{port}/0"

    def stack(self, name: str, max_batch: int, threads: int) -> dict:
        """redis + query worker + API; returns {url, redis_url, worker, api}."""
        redis_url = self.redis(f"redis-{name}")
        port = free_port()
        w = self.spawn([sys.executable, "-m", "videokv.cli", "query-worker", "--max-batch", str(max_batch)],
                       f"query-worker-{name}", VIDEOKV_REDIS_URL=redis_url, OMP_NUM_THREADS=str(threads))
        a = self.spawn([sys.executable, "-m", "uvicorn", "videokv.services:api_app", "--factory", "--host", HOST,
                        "--port", str(port), "--log-level", "warning"], f"api-{name}", VIDEOKV_REDIS_URL=redis_url)
        return {"url": f"http://{HOST}:{port}", "redis_url": redis_url, "worker": w, "api": a}

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop_process(p)
        for log in self.logs:
            log.close()


def work_dir(given: Path | None, prefix: str) -> Path:
    """--dir, or a temp dir (removed by finish() after a run that did not fail)."""
    work = Path(tempfile.mkdtemp(prefix=prefix)) if given is None else given
    work.mkdir(parents=True, exist_ok=True)
    return work


def process_env(**extra) -> dict:
    """The environment of the services a benchmark starts: open auth, VIDEOKV_DEVICE (cpu by
    default), one torch thread unless told, this checkout first on the Python path."""
    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "VIDEOKV_AUTH": "open", "VIDEOKV_DEVICE": os.environ.get("VIDEOKV_DEVICE", "cpu"),
            "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", ""))
                                                                  if p), **extra}


def finish(result: dict, args, work: Path, measured: str, plot, markdown) -> int:
    """Outputs of a run (JSON, PNG, table when `measured` is in the result, else the failure
    as JSON with where the logs are), the temp dir removed after success; the exit code."""
    from ._common import write_outputs
    if args.dir is None and result.get("failed") == 0:
        shutil.rmtree(work, ignore_errors=True)
    if measured in result:
        write_outputs(result, args.out, None, plot, markdown, markdown)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"failed: {result['errors']} (logs in {work})", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=1))
    return 0 if result["failed"] == 0 else 1
