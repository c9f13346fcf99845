"""A real redis-server on a free port, a real Celery worker process and the real API app
(TestClient) over one service home shared by the tests of this folder."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MODEL_CACHE, ROOT

CHUNK_FRAMES = 4          # more, smaller chunks: progress and mid-ingest kills are observable
MAX_UPLOAD_MB = 2
# A killed worker's ingest is re-queued when its lease lapses: shorter than the default 30 s,
# so the tests that kill workers wait less (still several renewals long).
LEASE_TTL_S = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        # Persistence on (AOF, fsync per write), as a real deployment runs it: queued and
        # unacked task messages live in Redis and must survive a Redis restart.
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        """Stop (SIGTERM) and start again on the same port and data dir."""
        self.stop()
        self.start()

    def client(self):
        import redis
        return redis.Redis(port=self.port)


class Worker:
    """`celery -A videokv.services worker` as a subprocess (prefork, one child)."""

    def __init__(self, env: dict, log: Path, queues: str = "ingest,query"):
        self.env, self.log, self.proc, self.queues = env, log, None, queues

    def start(self) -> "Worker":
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "videokv.services", "worker", "-Q", self.queues,
             "-c", "1", "--pool=prefork", "--loglevel=INFO", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-n", f"w{time.monotonic_ns()}@%h"],
            env=self.env, cwd=ROOT, stdout=self._fh, stderr=subprocess.STDOUT)
        return self

    def children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except FileNotFoundError:
            return []
        return [int(x) for x in text.split()]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                for c in self.children():
                    os.kill(c, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(5)
        self._fh.close()


def terminate(proc: subprocess.Popen | None, wait_s: float) -> None:
    """SIGTERM a test's service process; SIGKILL it after `wait_s` seconds."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()


def stop_together(*services, grace_s: float = 15) -> None:
    """Stop test service processes (Worker, QueryWorkerProcess, ApiServer; None is skipped) at
    once: SIGTERM to every live one first, up to `grace_s` for them to exit, then each one's own
    stop (for one still running: its own SIGTERM, wait and kill). One after another, their
    graceful shutdowns add up; here they overlap, and each is signalled once when it exits in time."""
    live = [s for s in services if s is not None and s.proc is not None]
    for s in live:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for s in live:
        try:
            s.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        s.stop()


class QueryWorkerProcess:
    """`videokv query-worker` as a subprocess; started once it heartbeats in Redis."""

    def __init__(self, env: dict, log: Path, max_batch: int | None = None):
        self.env, self.log, self.proc, self.max_batch = env, log, None, max_batch

    def start(self, timeout: float = 120, wait: bool = True) -> "QueryWorkerProcess":
        self._fh = open(self.log, "ab")
        extra = ["--max-batch", str(self.max_batch)] if self.max_batch else []
        self.proc = subprocess.Popen([sys.executable, "-m", "videokv.cli", "query-worker", *extra], env=self.env,
                                     cwd=ROOT, stdout=self._fh, stderr=subprocess.STDOUT)
        return self.wait(timeout) if wait else self

    def wait(self, timeout: float = 120) -> "QueryWorkerProcess":
        """Until it heartbeats (under its shard's names, VIDEOKV_SHARD)."""
        import redis

        from videokv.workers.questions import live_workers
        from videokv.workers.shards import Names
        r = redis.Redis.from_url(self.env["VIDEOKV_REDIS_URL"])
        names = Names(self.env.get("VIDEOKV_SHARD", ""))
        deadline = time.monotonic() + timeout
        while not any(b.get("pid") == self.proc.pid for b in live_workers(r, names).values()):
            assert self.proc.poll() is None, f"the query worker exited: see {self.log}"
            assert time.monotonic() < deadline, "the query worker did not start"
            time.sleep(0.2)
        return self

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        terminate(self.proc, 40)        # it finishes the questions in flight first
        self._fh.close()


class ApiServer:
    """`uvicorn videokv.services:api_app` (or another app factory) as a subprocess on a free
    loopback port."""

    def __init__(self, env: dict, log: Path, factory: str = "videokv.services:api_app"):
        self.env, self.log, self.proc, self.factory = env, log, None, factory
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60, wait: bool = True) -> "ApiServer":
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "uvicorn", self.factory, "--factory",
                                      "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
                                     env=self.env, cwd=ROOT, stdout=self._fh, stderr=subprocess.STDOUT)
        return self.wait(timeout) if wait else self

    def wait(self, timeout: float = 60) -> "ApiServer":
        import httpx
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"the API exited: see {self.log}"
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)

    def stop(self) -> None:
        terminate(self.proc, 15)
        self._fh.close()


def service_process_env(home: Path, redis_url: str, **settings) -> dict:
    """The environment of a test service's processes: its own home, the shared model cache,
    one torch thread, VIDEOKV_<KEY> for each of `settings`."""
    env = {**os.environ, "VIDEOKV_HOME": str(home), "VIDEOKV_MODEL_CACHE": str(MODEL_CACHE),
           "VIDEOKV_REDIS_URL": redis_url, "VIDEOKV_AUTH": "keys", "VIDEOKV_DEVICE": "cpu",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "VIDEOKV_LEASE_TTL_S": str(LEASE_TTL_S)}
    env.update({f"VIDEOKV_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@pytest.fixture(scope="session")
def service_env(tmp_path_factory):
    work = tmp_path_factory.mktemp("service")
    redis = RedisServer(work)
    redis.start()
    home = work / "home"
    env = {**os.environ, "VIDEOKV_HOME": str(home), "VIDEOKV_MODEL_CACHE": str(MODEL_CACHE),
           "VIDEOKV_REDIS_URL": redis.url, "VIDEOKV_CHUNK_FRAMES": str(CHUNK_FRAMES),
           "VIDEOKV_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB), "VIDEOKV_AUTH": "keys", "VIDEOKV_DEVICE": "cpu",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "VIDEOKV_LEASE_TTL_S": str(LEASE_TTL_S)}
    yield {"env": env, "home": home, "redis": redis, "work": work}
    redis.stop()


@pytest.fixture
def svc(service_env, monkeypatch):
    """Points this test's settings at the shared service home."""
    for k in ("VIDEOKV_HOME", "VIDEOKV_REDIS_URL", "VIDEOKV_CHUNK_FRAMES", "VIDEOKV_MAX_UPLOAD_MB", "VIDEOKV_AUTH",
              "VIDEOKV_MODEL_CACHE", "VIDEOKV_DEVICE"):
        monkeypatch.setenv(k, service_env["env"][k])
    from videokv.settings import get_settings
    get_settings.cache_clear()
    return service_env


@pytest.fixture(scope="session")
def worker(service_env):
    """The session's Celery worker; it serves its metrics on `w.metrics_port`."""
    port = free_port()
    w = Worker({**service_env["env"], "VIDEOKV_WORKER_METRICS_PORT": str(port)}, service_env["work"] / "worker.log")
    w.metrics_port = port
    yield w.start()
    w.stop()


@pytest.fixture(scope="session")
def query_worker(service_env):
    """The session's query worker; it serves its metrics on `q.metrics_port`."""
    port = free_port()
    q = QueryWorkerProcess({**service_env["env"], "VIDEOKV_QUERY_WORKER_METRICS_PORT": str(port)},
                           service_env["work"] / "query-worker.log")
    q.metrics_port = port
    yield q.start()
    q.stop()


@pytest.fixture(scope="module")
def api(service_env, query_worker, worker, request):
    """The API as its own uvicorn process over the shared home, one per test module."""
    a = ApiServer(service_env["env"], service_env["work"] / f"api-{request.module.__name__.rsplit('.', 1)[-1]}.log")
    yield a.start()
    a.stop()


@pytest.fixture(scope="session")
def app_client(service_env, query_worker):
    from fastapi.testclient import TestClient

    from videokv.services import api_app
    from videokv.settings import Settings

    e = service_env["env"]
    settings = Settings(home=service_env["home"], model_cache=MODEL_CACHE, redis_url=e["VIDEOKV_REDIS_URL"],
                        chunk_frames=CHUNK_FRAMES, max_upload_mb=MAX_UPLOAD_MB, auth="keys", device="cpu")
    with TestClient(api_app(settings)) as c:
        yield c


@pytest.fixture(scope="session")
def keys(service_env):
    from videokv.api.auth import KeyRing
    ring = KeyRing(service_env["home"])
    return {"acme": ring.create("acme"), "globex": ring.create("globex"), "empty": ring.create("empty")}


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    from videokv.toyworld.synth import render_video
    d = tmp_path_factory.mktemp("videos")
    out = {}
    for name, minutes, seed in (("a", 0.5, 1), ("b", 0.5, 2)):
        p = d / f"{name}.mp4"
        render_video(p, minutes, 2, seed)
        out[name] = p
    return out


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def wait_status(client, vid: str, key: str, statuses=("READY", "FAILED"), timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v1/videos/{vid}", headers=auth(key))
        assert r.status_code == 200, r.text
        if r.json()["status"] in statuses:
            return r.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"video {vid} still {r.json()} after {timeout} s")
        time.sleep(0.2)


def wait_mid_ingest(store, vid: str, min_done: int, timeout: float) -> None:
    """Block until `vid` has >= min_done chunks committed and at least 3 still to go."""
    deadline = time.monotonic() + timeout
    while True:
        rec = store.get_video(vid)
        total = rec.chunks_total or rec.chunks_expected        # while streaming: the expected chunks
        if total and min_done <= rec.chunks_done < total - 3:
            return
        assert rec.status.value != "READY", "ingest finished too early: make the video longer"
        assert time.monotonic() < deadline, rec
        time.sleep(0.02)
