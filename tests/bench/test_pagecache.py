"""bench/_pagecache.py: a store put out of memory really is (mincore says so), and reads the
same bytes back from the disk afterwards."""

from pathlib import Path

import pytest
import torch

from tests.kvstore import kvstore_helpers as h


def _fs_type(path) -> str:
    """The filesystem type of the mount holding `path` (longest mount point that prefixes it)."""
    best, kind = "", ""
    for line in open("/proc/self/mounts"):
        _, mnt, fs = line.split()[:3]
        if Path(path).is_relative_to(mnt) and len(mnt) > len(best):
            best, kind = mnt, fs
    return kind


def test_drop_store_pages_puts_the_store_out_of_memory(tmp_path):
    from videokv.bench._pagecache import data_file, drop_store_pages, resident_fraction
    from videokv.kvstore import KVStore

    if _fs_type(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip("the test's directory is in memory (tmpfs): its pages cannot leave it")
    store = KVStore(tmp_path / "store")
    vid = store.create_video(content_hash=h.sha("a"), fingerprint=h.FP, tenant="t", plan=h.plan(6),
                             filename="a.mp4", duration=96.0, fps=30.0).video_id
    for i in range(6):
        store.put_chunk(vid, [h.make_chunk(0, i, "L", tokens=4096)], {h.ORACLE: h.embedding(0, i)})
    before = [store.read_chunk(vid, i, "L") for i in range(6)]
    assert resident_fraction(data_file(store)) > 0.5          # just written and read: in memory
    left = drop_store_pages(store)
    assert left < 0.1 and abs(resident_fraction(data_file(store)) - left) < 0.05
    after = [store.read_chunk(vid, i, "L") for i in range(6)]  # from the disk, the same bytes
    assert all(torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values) for a, b in zip(before, after))
    assert resident_fraction(data_file(store)) > 0.5
