"""A full disk (issue 21, item 6 and part of 5): the service's home on a 40 MB tmpfs, filled.
An upload and a batch job get 507 with a sentence (not 400 / 500), /readyz says the disk is
low, an ingest that runs out of space fails saying so, and once space is freed a re-upload
goes through. Real Redis, a real worker and the real API; needs root to mount the tmpfs."""

from __future__ import annotations

import errno
import os
import subprocess
import time

import httpx
import pytest

from .conftest import ApiServer, QueryWorkerProcess, RedisServer, Worker, service_process_env, stop_together
from .test_hardening import H, wait_for


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    from videokv.api.auth import KeyRing

    work = tmp_path_factory.mktemp("diskfull")
    home = work / "home"
    home.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(home)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the home here ({mounted.stderr.strip()}): needs root")
    redis = RedisServer(work)
    redis.start()
    env = service_process_env(home, redis.url, chunk_frames=16, ingest_max_retries=0, min_free_mb=8)
    ns = {"work": work, "home": home, "env": env, "redis": redis, "key": KeyRing(home).create("acme"),
          "api": ApiServer(env, work / "api.log").start(wait=False), "worker": Worker(env, work / "worker.log").start(),
          "query_worker": QueryWorkerProcess(env, work / "query-worker.log").start(wait=False)}
    ns["api"].wait(), ns["query_worker"].wait()                 # started side by side
    yield ns
    stop_together(ns["api"], ns["query_worker"], ns.get("worker"))
    redis.stop()
    subprocess.run(["umount", "-l", str(home)])


def fill(home, leave_bytes: int):
    """A filler file that leaves about `leave_bytes` free; 0 fills the disk, and running out
    of room on the way is then the point (the worker may be writing an ingest meanwhile)."""
    (home / "filler").unlink(missing_ok=True)
    left = max(0, os.statvfs(home).f_bavail * os.statvfs(home).f_frsize - leave_bytes)
    block = b"\0" * (1 << 20)
    with open(home / "filler", "wb", buffering=0) as f:
        while left > 0:
            try:
                left -= f.write(block[:left])
            except OSError as e:
                if e.errno == errno.ENOSPC and not leave_bytes:
                    return
                raise


def test_full_disk_is_507_readyz_says_so_and_ingest_fails_with_a_sentence(full, tmp_path):
    from videokv.toyworld.synth import render_video

    api, k = full["api"].url, full["key"]
    clip, other = tmp_path / "clip.mp4", tmp_path / "other.mp4"
    render_video(clip, 0.5, 2, 41)
    render_video(other, 0.5, 2, 42)
    third = tmp_path / "third.mp4"
    render_video(third, 0.5, 2, 43)
    # Room for the upload, not for the KVs: the ingest runs out of space.
    k0 = httpx.post(api + "/v1/videos", headers=H(k), files={"file": ("other.mp4", other.read_bytes(), "video/mp4")})
    wait_for({"api": full["api"]}, k, k0.json()["id"])     # the worker ran once: its space reserve is there
    assert (full["home"] / "space-reserve").exists()
    fill(full["home"], clip.stat().st_size + (2 << 20))
    up = httpx.post(api + "/v1/videos", headers=H(k), files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")})
    assert up.status_code == 202, up.text
    vid = up.json()["id"]
    fill(full["home"], 0)                               # now the disk is full
    r = httpx.post(api + "/v1/videos", headers=H(k), files={"file": ("third.mp4", third.read_bytes(), "video/mp4")})
    assert r.status_code == 507 and r.json()["code"] == "insufficient_storage" and "space" in r.json()["detail"], r.text
    ready = httpx.get(api + "/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["disk"].startswith("error: low")
    v = wait_for({"api": full["api"]}, k, vid, timeout=120)
    assert v["status"] == "FAILED" and "disk space" in v["error"], v
    jobs = httpx.post(api + "/v1/jobs", headers=H(k), json={"video_ids": [vid], "questions": ["What?"]})
    assert jobs.status_code == 507, jobs.text
    # Space back: the same upload is queued again and goes through.
    (full["home"] / "filler").unlink()
    assert httpx.get(api + "/readyz").json()["checks"]["disk"].startswith("ok")
    again = httpx.post(api + "/v1/videos", headers=H(k), files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")})
    assert again.status_code == 200 and again.json()["id"] == vid, again.text
    deadline = time.monotonic() + 120
    assert wait_for({"api": full["api"]}, k, vid, timeout=deadline - time.monotonic())["status"] == "READY"
