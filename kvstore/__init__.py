"""kvstore: LMDB blob store, video catalog and FAISS chunk indexes (DESIGN.md, Storage).

    store = KVStore(home)                      # home / "kv.lmdb"
    v = store.create_video(content_hash=sha, fingerprint=fp, tenant="acme", plan=plan, filename="a.mp4")
    store.put_prefix(v.video_id, [prefix_full])
    store.put_chunk(v.video_id, [chunk_L, chunk_H], {"minilm": emb})   # one transaction
    store.mark_ready(v.video_id)
    hits = store.search("minilm", q, k=3, tenant="acme")             # [Hit(video_id, chunk, score)]
    with store.reader() as r:                                         # zero-copy paging
        r.load_into(v.video_id, 7, "L", pinned_buf)

One `KVStore` per process (they share the process's LMDB handle); never across a fork.
"""

from .blob import BlobHeader, BlobView
from .catalog import ChunkRecord, ChunkSpan, Status, VideoRecord
from .errors import (
                                    ChunkNotFoundError,
                                    CorruptBlobError,
                                    FingerprintMismatchError,
                                    KVStoreError,
                                    NotReadyError,
                                    VideoNotFoundError,
)
from .reader import ReadSession
from .store import Hit, KVStore

__all__ = ["KVStore", "Hit", "VideoRecord", "ChunkRecord", "ChunkSpan", "Status", "ReadSession",
           "BlobView", "BlobHeader", "KVStoreError", "CorruptBlobError", "VideoNotFoundError",
           "ChunkNotFoundError", "FingerprintMismatchError", "NotReadyError"]
