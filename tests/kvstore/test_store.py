"""kvstore in one process: format, integrity, dedup, deletion, map growth, tenants, index."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvstore_helpers as h  # noqa: E402

from videokv.kvstore import (  # noqa: E402
    CorruptBlobError,
    FingerprintMismatchError,
    KVStore,
    NotReadyError,
    Status,
    VideoNotFoundError,
)
from videokv.kvstore import blob as blobfmt  # noqa: E402


def _store(tmp_path, **kw) -> KVStore:
    return KVStore(tmp_path / "store", **kw)


def _new(store, name="a", tenant="t", n=4, fp=h.FP):
    return store.create_video(content_hash=h.sha(name), fingerprint=fp, tenant=tenant, plan=h.plan(n),
                              filename=f"{name}.mp4", duration=n * 16.0, fps=30.0).video_id


def _entries(store, db):
    with store.env.read() as txn:
        return txn.count(db)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_roundtrip_bit_exact(tmp_path, dtype):
    store = _store(tmp_path)
    vid = _new(store)
    c = h.make_chunk(0, 2, "L", dtype=dtype, tokens=300)
    c.keys[0, 0, 0, 0] = float("nan")          # odd values survive too
    c.values[1, 0, 1, 1] = float("-inf")
    store.put_chunk(vid, [c, h.make_chunk(0, 2, "H", dtype=dtype)], {h.ORACLE: h.embedding(0, 2)})
    got = store.read_chunk(vid, 2, "L")
    assert got.dtype == dtype and got.keys.shape == c.keys.shape and got.level == "L"
    assert torch.equal(_bits(got.keys), _bits(c.keys)) and torch.equal(_bits(got.values), _bits(c.values))
    assert torch.equal(got.kinds, c.kinds)
    assert (got.index, got.frame_start, got.frame_end, got.t_start, got.fingerprint) == (2, 32, 48, 32.0, h.FP)
    rec = store.chunk_records(vid)[0]
    assert rec.tokens == {"L": 300, "H": 4} and rec.oracles == [f"{h.ORACLE}@{h.DIM}"]


def _mmap_ranges(path_part: str):
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            if path_part in line:
                a, b = line.split()[0].split("-")
                out.append((int(a, 16), int(b, 16)))
    return out


def test_zero_copy_views_point_into_lmdb_mmap(tmp_path):
    store = _store(tmp_path)
    vid = _new(store)
    store.put_chunk(vid, [h.make_chunk(0, 0, "L", dtype=torch.bfloat16, tokens=512)], {h.ORACLE: h.embedding(0, 0)})
    data_mdb = str(tmp_path / "store" / "kv.lmdb" / "data.mdb")
    with store.reader() as r:
        mv = r.raw(vid, 0, "L")
        assert isinstance(mv, memoryview)                 # LMDB handed us its buffer, no bytes copy
        v = r.blob(vid, 0, "L")
        assert v.zero_copy
        lo, hi = v.kv.data_ptr(), v.kv.data_ptr() + v.nbytes
        assert any(a <= lo and hi <= b for a, b in _mmap_ranges(data_mdb)), "tensor is not inside the LMDB map"
        assert lo == np.frombuffer(mv, np.uint8).ctypes.data + v.header.data_offset
        ck = r.chunk(vid, 0, "L")
        assert ck.keys.data_ptr() == lo                   # ChunkKV views alias the map as well
        out = torch.empty(v.header.shape, dtype=torch.bfloat16)
        r.load_into(vid, 0, "L", out)                     # the single copy a pager makes
        assert torch.equal(out[:, 0], h.make_chunk(0, 0, "L", dtype=torch.bfloat16, tokens=512).keys)


def test_flipped_byte_in_data_file_is_a_checksum_error(tmp_path):
    store = _store(tmp_path)
    vid = _new(store)
    c = h.make_chunk(0, 3, "L", tokens=256)
    store.put_chunk(vid, [c, h.make_chunk(0, 3, "H")], {h.ORACLE: h.embedding(0, 3)})
    # Flip one byte of the tensor data in data.mdb itself, the way bit rot would.
    path = tmp_path / "store" / "kv.lmdb" / "data.mdb"
    data = bytearray(path.read_bytes())
    pos = data.find(c.values[1].numpy().tobytes()[:64])
    assert pos > 0
    with open(path, "r+b") as f:
        f.seek(pos + 10)
        f.write(bytes([data[pos + 10] ^ 0x01]))
    with pytest.raises(CorruptBlobError) as ei:
        store.read_chunk(vid, 3, "L")
    msg = str(ei.value)
    assert f"video {vid} chunk 3 level L" in msg and "checksum" in msg
    assert store.read_chunk(vid, 3, "H").tokens == 4      # the other blob is intact


@pytest.mark.parametrize("algo", [blobfmt.CRC32, blobfmt.XXH3])
def test_both_checksums_catch_a_flip(algo):
    c = h.make_chunk(0, 1, "L", dtype=torch.float16)
    buf = blobfmt.encode(c.keys, c.values, c.kinds, checksum=algo)
    assert torch.equal(blobfmt.decode(buf).keys, c.keys)
    for pos in (5 + 2, 20, blobfmt.HEADER_SIZE + 1, len(buf) - 1):   # dtype byte, dims, kinds, data
        bad = bytearray(buf)
        bad[pos] ^= 0x40
        with pytest.raises(CorruptBlobError):
            blobfmt.decode(bad)


def test_unknown_magic_or_version_is_a_clear_error():
    c = h.make_chunk(0, 1, "H")
    buf = blobfmt.encode(c.keys, c.values, c.kinds)
    blobfmt.decode(buf)
    bad = bytearray(buf)
    bad[4] = 9                                             # format version 9
    with pytest.raises(CorruptBlobError, match="version 9.*video v1 chunk 1 level H|video v1 chunk 1 level H.*version 9"):
        blobfmt.decode(bad, where={"video_id": "v1", "index": 1, "level": "H"})
    bad = bytearray(buf)
    bad[0:4] = b"XXXX"
    with pytest.raises(CorruptBlobError, match="magic"):
        blobfmt.decode(bad)
    with pytest.raises(CorruptBlobError, match="size mismatch"):
        blobfmt.decode(buf[:-2])


def test_dedup_by_content_hash_and_fingerprint_isolation(tmp_path):
    store = _store(tmp_path)
    a = _new(store, "same", tenant="t1")
    assert h.ingest(store, a, 0) == 4
    blobs = _entries(store, "blobs")
    # Same bytes, same tenant, same fingerprint: the existing video comes back.
    again = store.create_video(content_hash=h.sha("same"), fingerprint=h.FP, tenant="t1", plan=h.plan(4))
    assert again.video_id == a and again.status is Status.READY
    assert store.find_by_content(h.sha("same"), h.FP, "t1").video_id == a
    # Another tenant: its own video record, but the KV bytes are stored once.
    b = _new(store, "same", tenant="t2")
    assert b != a and store.missing_chunks(b) == []
    assert h.ingest(store, b, 0) == 0 and _entries(store, "blobs") == blobs
    assert store.get_video(b).status is Status.READY
    # Another fingerprint: nothing shared, and reading as the wrong model is refused.
    c = _new(store, "same", tenant="t1", fp="fp-other")
    assert c != a and len(store.missing_chunks(c)) == 4
    with pytest.raises(FingerprintMismatchError):
        store.put_chunk(c, [h.make_chunk(0, 0, "L")], {h.ORACLE: h.embedding(0, 0)})  # made with h.FP
    with store.reader() as r, pytest.raises(FingerprintMismatchError):
        r.blob(a, 0, "L", fingerprint="fp-other")
    # Deleting one of two videos over shared content keeps the bytes for the other.
    store.delete_video(a)
    assert store.read_chunk(b, 1, "H").tokens == 4
    hits = store.search(h.ORACLE, h.embedding(0, 1), k=1, tenant="t2")
    assert [(x.video_id, x.chunk) for x in hits] == [(b, 1)]


def test_delete_then_reingest_reuses_space(tmp_path):
    store = _store(tmp_path)
    n = 20
    vid = _new(store, n=n)
    h.ingest(store, vid, 0, l_tokens=2048)
    assert store.index(h.ORACLE, h.DIM).ntotal == n
    size_full = (tmp_path / "store" / "kv.lmdb" / "data.mdb").stat().st_size
    assert store.delete_video(vid)
    with pytest.raises(VideoNotFoundError):
        store.get_video(vid)
    for db in ("blobs", "chunks", "embeddings", "catalog", "contents"):
        assert _entries(store, db) == 0, db
    assert store.index(h.ORACLE, h.DIM).ntotal == 0
    assert store.list_videos("t") == []

    vid2 = _new(store, n=n)                                # same file uploaded again
    assert vid2 != vid and store.missing_chunks(vid2) == list(range(n))
    h.ingest(store, vid2, 0, l_tokens=2048)
    # Freed pages were reused: the file did not grow by another copy of the data.
    assert (tmp_path / "store" / "kv.lmdb" / "data.mdb").stat().st_size < size_full * 1.3
    assert store.index(h.ORACLE, h.DIM).ntotal == n
    hits = store.search(h.ORACLE, np.stack([h.embedding(0, i) for i in range(n)]), k=1, tenant="t")
    assert [(row[0].video_id, row[0].chunk) for row in hits] == [(vid2, i) for i in range(n)]


def test_map_grows_past_initial_size(tmp_path):
    store = _store(tmp_path, map_size=1 << 20)
    n = 12
    vid = _new(store, n=n)
    h.ingest(store, vid, 0, l_tokens=8192)                 # 12 x 256 KiB L blobs: ~3 MiB
    assert store.env.grow_count >= 2 and store.env.map_size >= 4 << 20
    with store.reader() as r:
        for i in range(n):
            assert torch.equal(r.chunk(vid, i, "L").keys, h.make_chunk(0, i, "L", tokens=8192).keys)


def test_search_by_tenant_never_leaks(tmp_path):
    store = _store(tmp_path)
    n = 6
    # Two tenants with identical embeddings: scores tie, only the filter separates them.
    mine = [_new(store, f"m{j}", tenant="alice", n=n) for j in range(2)]
    theirs = [_new(store, f"x{j}", tenant="bob", n=n) for j in range(2)]
    for vid in mine + theirs:
        h.ingest(store, vid, 0)
    pending = _new(store, "p", tenant="alice", n=n)        # not READY: not searchable by tenant
    store.put_chunk(pending, [h.make_chunk(0, 0, "H")], {h.ORACLE: h.embedding(0, 0)})
    q = np.stack([h.embedding(0, i) for i in range(n)])
    for row in store.search(h.ORACLE, q, k=100, tenant="alice"):
        assert {x.video_id for x in row} <= set(mine) and len(row) == 2 * n
    for row in store.search(h.ORACLE, q, k=100, tenant="bob"):
        assert {x.video_id for x in row} <= set(theirs)
    # Asking for bob's video as alice yields nothing; one video's search stays in it.
    assert store.search(h.ORACLE, q[0], k=5, video_ids=[theirs[0]], tenant="alice") == []
    one = store.search(h.ORACLE, q[3], k=3, video_ids=[mine[1]])
    assert one[0].video_id == mine[1] and one[0].chunk == 3 and {x.video_id for x in one} == {mine[1]}
    with pytest.raises(ValueError):
        store.search(h.ORACLE, q[0], k=1)                  # no scope: refused, not "everything"


def test_mark_ready_refuses_incomplete_and_status_rules(tmp_path):
    store = _store(tmp_path)
    vid = _new(store, n=3)
    assert store.get_video(vid).status is Status.QUEUED
    store.put_prefix(vid, [h.make_chunk(0, -1, "full")])
    store.put_chunk(vid, [h.make_chunk(0, 0, "L")], {h.ORACLE: h.embedding(0, 0)})
    store.put_chunk(vid, [h.make_chunk(0, 1, "L")], None)   # committed without an index entry
    with pytest.raises(NotReadyError) as ei:
        store.mark_ready(vid)
    assert ei.value.missing == [2] and ei.value.missing_embeddings == [1]
    assert store.get_video(vid).status is Status.INGESTING
    with pytest.raises(ValueError):
        store.set_status(vid, "READY")
    rec = store.set_status(vid, Status.FAILED, "decoder crashed")
    assert (rec.status, rec.reason) == (Status.FAILED, "decoder crashed")
    assert store.first_missing_chunk(vid) == 2


def test_index_snapshot_roundtrip_and_catch_up(tmp_path):
    store = _store(tmp_path)
    v0 = _new(store, "s0", n=5)
    h.ingest(store, v0, 0)
    path = store.save_index(h.ORACLE, h.DIM)
    assert path.exists() and not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    v1 = _new(store, "s1", n=5)                              # written after the snapshot
    h.ingest(store, v1, 1)
    store.delete_video(v0)

    fresh = KVStore(tmp_path / "store")                      # same process env, fresh index cache
    idx = fresh.index(h.ORACLE, h.DIM)                       # loads the stale snapshot, replays the log
    assert idx.ntotal == 5
    hits = fresh.search(h.ORACLE, np.stack([h.embedding(1, i) for i in range(5)]), k=1, tenant="t")
    assert [(row[0].video_id, row[0].chunk) for row in hits] == [(v1, i) for i in range(5)]
    assert fresh.rebuild_index(h.ORACLE, h.DIM).ntotal == 5

    # A snapshot from another store is ignored (rebuilt from LMDB instead).
    other = KVStore(tmp_path / "other")
    (tmp_path / "other" / "faiss").mkdir(parents=True)
    (tmp_path / "other" / "faiss" / path.name).write_bytes(path.read_bytes())
    assert other.index(h.ORACLE, h.DIM).ntotal == 0


def test_snapshot_written_automatically_and_keys_validated(tmp_path):
    store = KVStore(tmp_path / "store", snapshot_every=3)
    vid = _new(store, n=4)
    h.ingest(store, vid, 0)
    store.search(h.ORACLE, h.embedding(0, 0), k=1, video_ids=[vid])
    snap = tmp_path / "store" / "faiss" / f"{h.ORACLE}@{h.DIM}.faiss"
    assert snap.exists() and store.index(h.ORACLE, h.DIM).saved_seq == 4
    with pytest.raises(ValueError, match="fingerprint"):
        store.create_video(content_hash=h.sha("x"), fingerprint="a/b", plan=h.plan(1))
    with pytest.raises(ValueError, match="tenant"):
        store.create_video(content_hash=h.sha("x"), fingerprint=h.FP, tenant="a\0b", plan=h.plan(1))


def test_map_growth_waits_for_open_read_sessions_in_other_threads(tmp_path):
    import threading
    import time

    store = _store(tmp_path, map_size=1 << 20)
    vid = _new(store, n=8)
    store.put_chunk(vid, [h.make_chunk(0, 0, "L", tokens=1024)], {h.ORACLE: h.embedding(0, 0)})
    want = h.make_chunk(0, 0, "L", tokens=1024).keys
    in_session, checked = threading.Event(), []

    def reader():
        with store.reader() as r:
            keys = r.chunk(vid, 0, "L").keys          # a view of the current map
            in_session.set()
            time.sleep(0.3)                           # the writer must grow the map meanwhile
            checked.append(torch.equal(keys, want))   # still valid: the remap waited for us

    t = threading.Thread(target=reader)
    t.start()
    in_session.wait()
    grows = store.env.grow_count
    for i in range(1, 8):                             # ~2 MiB more: forces growth
        store.put_chunk(vid, [h.make_chunk(0, i, "L", tokens=4096)], {h.ORACLE: h.embedding(0, i)})
    t.join()
    assert checked == [True] and store.env.grow_count > grows
    with store.reader(), pytest.raises(Exception, match="read session"):
        store.put_chunk(vid, [h.make_chunk(0, 0, "H")], None)   # writing inside one's own snapshot


def _mapped_kb(path) -> int:
    """This process's resident pages of the mapping of `path` (smaps), in KiB."""
    total, cur = 0, None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and "-" in parts[0] and ":" in parts[3]:
                cur = parts[5] if len(parts) > 5 else ""
            elif line.startswith("Rss:") and cur == str(path):
                total += int(parts[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
def test_release_pages_lets_go_of_the_mapped_store(tmp_path):
    """A long ingest's RSS must not grow with what it stored: after reading 12 MiB out of the
    map, release_pages leaves (almost) none of it resident, and the data read back the same."""
    store = _store(tmp_path)
    vid = _new(store, n=12)
    h.ingest(store, vid, 0, l_tokens=32768)                # 12 x 1 MiB L blobs
    data = (tmp_path / "store" / "kv.lmdb" / "data.mdb").resolve()
    with store.reader() as r:
        for i in range(12):
            assert float(r.blob(vid, i, "L").kv.sum()) != 0.0       # touch every page
    assert _mapped_kb(data) > 10_000
    store.release_pages()
    assert _mapped_kb(data) < 512
    with store.reader() as r:
        assert torch.equal(r.chunk(vid, 5, "L").keys, h.make_chunk(0, 5, "L", tokens=32768).keys)
