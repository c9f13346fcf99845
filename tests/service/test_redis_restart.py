"""Redis (broker and result backend) restarted mid-ingest: the running ingest keeps going
(its progress goes to LMDB), the worker reconnects, a task still queued in Redis survives
the restart (AOF persistence) and both videos become READY, each chunk stored once."""

from __future__ import annotations

import time

from .conftest import auth, wait_mid_ingest, wait_status


def _upload(client, key, path):
    with open(path, "rb") as f:
        r = client.post("/v1/videos", headers=auth(key), files={"file": (path.name, f, "video/mp4")})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_redis_restart_mid_ingest(svc, worker, app_client, tmp_path):
    from videokv.toyworld.synth import render_video

    long_path, short_path = tmp_path / "long.mp4", tmp_path / "short.mp4"
    render_video(long_path, 1.0, 2, 11, size=(160, 120))
    render_video(short_path, 0.25, 1, 12, size=(160, 120))
    from videokv.api.auth import KeyRing
    k = KeyRing(svc["home"]).create("initech")
    redis = svc["redis"]
    store = app_client.app.state.service.rt.store

    v_long = _upload(app_client, k, long_path)
    wait_mid_ingest(store, v_long, min_done=1, timeout=90)
    # A second video waits in the queue (the one worker process is busy, prefetch 1): its task
    # message exists only in Redis.
    v_short = _upload(app_client, k, short_path)
    assert redis.client().llen("ingest") == 1

    redis.stop()
    done_at_stop = store.get_video(v_long).chunks_done
    deadline = time.monotonic() + 30
    while store.get_video(v_long).chunks_done == done_at_stop:     # the ingest goes on without Redis
        assert time.monotonic() < deadline and worker.proc.poll() is None
        time.sleep(0.05)
    time.sleep(1.0)
    redis.start()                                                  # same port, same data dir

    for vid in (v_long, v_short):
        v = wait_status(app_client, vid, k, timeout=180)
        assert v["status"] == "READY", v
        idx = [c.index for c in store.chunk_records(vid)]
        assert idx == list(range(-1, v["chunks_total"])), idx    # each chunk once
    assert worker.proc.poll() is None
    r = app_client.post(f"/v1/videos/{v_short}/query", headers=auth(k),
                        json={"question": "What moved?", "max_new_tokens": 4})
    assert r.status_code == 200 and r.json()["video_prefill_runs"] == 0
