"""kvstore under real concurrency and real crashes: separate Python processes on one LMDB."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvstore_helpers as h  # noqa: E402

from videokv.kvstore import KVStore, Status  # noqa: E402

WORKER = Path(__file__).with_name("worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _spawn(home, video_id, video_no, *extra):
    return subprocess.Popen([sys.executable, str(WORKER), str(home), video_id, str(video_no), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _count(store, db: str) -> int:
    with store.env.read() as txn:
        return txn.count(db)


def test_four_processes_four_videos_concurrently(tmp_path):
    home = tmp_path / "store"
    # Tiny initial map + bigger L blobs: the map must grow several times while four
    # processes write, so every process also has to adopt sizes grown by the others.
    store = KVStore(home, map_size=1 << 20)
    n = 50
    vids = [store.create_video(content_hash=h.sha(f"video{v}"), fingerprint=h.FP, tenant=f"t{v % 2}",
                               plan=h.plan(n)).video_id for v in range(4)]
    store.index(h.ORACLE, h.DIM)   # an index built before the writes: must catch up later
    procs = [_spawn(home, vid, v, "--l-tokens", "256") for v, vid in enumerate(vids)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert f"written {n}" in out

    # Every chunk record, blob (prefix full + L + H per chunk) and embedding is there.
    assert _count(store, "chunks") == 4 * (n + 1)
    assert _count(store, "blobs") == 4 * (2 * n + 1)
    assert _count(store, "embeddings") == 4 * n
    for v, vid in enumerate(vids):
        rec = store.get_video(vid)
        assert rec.status is Status.READY and rec.chunks_done == n
        assert store.missing_chunks(vid) == []
        with store.reader() as r:
            for i in range(n):
                want = h.make_chunk(v, i, "H")
                got = r.chunk(vid, i, "H")
                assert torch.equal(got.keys, want.keys) and torch.equal(got.values, want.values)
                assert r.blob(vid, i, "L").header.tokens == 256
    # The writers grew the map; this process adopted the new size when it began reading.
    assert sum(int(out.split("grew ")[1]) for out, _ in outs) > 0
    assert store.env.map_size > 1 << 20

    # The index caught up with all four writers: 200 entries, each chunk found at rank 1.
    idx = store.index(h.ORACLE, h.DIM)
    assert idx.ntotal == 4 * n
    for tenant in ("t0", "t1"):
        mine = [(v, vid) for v, vid in enumerate(vids) if f"t{v % 2}" == tenant]
        q = np.stack([h.embedding(v, i) for v, _ in mine for i in range(n)])
        hits = store.search(h.ORACLE, q, k=3, tenant=tenant)
        expect = [(vid, i) for _, vid in mine for i in range(n)]
        assert [(row[0].video_id, row[0].chunk) for row in hits] == expect
        assert all(row[0].score == 1.0 for row in hits)


def test_sigkill_mid_video_then_resume(tmp_path):
    home = tmp_path / "store"
    store = KVStore(home, map_size=1 << 20)
    n = 50
    vid = store.create_video(content_hash=h.sha("killme"), fingerprint=h.FP, tenant="t", plan=h.plan(n)).video_id
    p = _spawn(home, vid, 0, "--delay", "0.02")
    seen = 0
    for line in p.stdout:
        if line.startswith("done"):
            seen += 1
            if seen == 12:
                p.send_signal(signal.SIGKILL)
                break
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL

    rec = store.get_video(vid)
    assert rec.status is not Status.READY
    missing = store.missing_chunks(vid)
    committed = n - len(missing)
    assert 12 <= committed < n
    assert missing == list(range(committed, n))       # chunks commit in order, wholly or not at all
    assert rec.chunks_done == committed

    # Restart: resumes at the first missing chunk, writes only what was missing.
    p2 = _spawn(home, vid, 0)
    out, err = p2.communicate(timeout=60)
    assert p2.returncode == 0, err
    assert f"resume {committed}" in out
    assert f"written {n - committed}" in out
    assert store.get_video(vid).status is Status.READY
    assert _count(store, "chunks") == n + 1 and _count(store, "embeddings") == n
    idx = store.index(h.ORACLE, h.DIM)
    assert idx.ntotal == n                            # no duplicate index entries
    hits = store.search(h.ORACLE, np.stack([h.embedding(0, i) for i in range(n)]), k=1, video_ids=[vid])
    assert [row[0].chunk for row in hits] == list(range(n))
