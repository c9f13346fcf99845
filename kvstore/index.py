"""FAISS chunk indexes, derived from the embeddings in LMDB.

LMDB is the source of truth. Every embedding write and every content deletion appends an
entry to the `emblog` database (key: a global sequence number assigned inside the same
write transaction, so log order == commit order). A `ChunkIndex` remembers the last log
sequence it applied; `catch_up(txn)` applies the rest from one read snapshot. Since every
process replays the same log before it searches, several processes ingesting at once lose
no entry, and a process never needs to be told about another's writes.

FAISS ids: `content_seq << 20 | chunk` (content_seq is assigned once per stored content
and never reused, so a deleted-then-re-ingested video gets fresh ids). Search restricts
ids with a FAISS IDSelector (a range for one content, a batch for several), so a hit
outside the allowed set can never be returned; results are re-checked anyway.

Snapshots: header JSON (oracle, dim, applied_seq, env_uuid) + faiss.serialize_index bytes,
written to a temp file, fsynced and renamed over the old one. At load, a snapshot from
another LMDB (env_uuid) or from the future (applied_seq > log head) is discarded and the
index rebuilt; an older one is caught up from the log.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import faiss
import numpy as np

from . import keys as K
from .backend import StorageBackend

ID_BITS = 20
MAX_CHUNKS = 1 << ID_BITS
_SNAP_MAGIC = b"VKVFAISS"


def faiss_id(seq: int, chunk: int) -> int:
    if not 0 <= chunk < MAX_CHUNKS:
        raise ValueError(f"chunk index {chunk} does not fit {ID_BITS} bits")
    return (seq << ID_BITS) | chunk


def split_id(fid: int) -> tuple[int, int]:
    return fid >> ID_BITS, fid & (MAX_CHUNKS - 1)


def log_head(txn) -> int:
    raw = txn.get("meta", b"log_seq")
    return 0 if raw is None else K.from_u64(raw)


def env_uuid(env: StorageBackend) -> str:
    """A random id stored once per LMDB environment (ties snapshots to their store)."""
    with env.read() as txn:
        raw = txn.get("meta", b"env_uuid")
        if raw is not None:
            return bytes(raw).decode()

    def fn(txn):
        raw = txn.get("meta", b"env_uuid")
        if raw is None:
            raw = os.urandom(8).hex().encode()
            txn.put("meta", b"env_uuid", raw)
        return bytes(raw).decode()
    return env.write(fn)


class ChunkIndex:
    """One oracle's chunk embeddings: IndexIDMap2(IndexFlatIP(dim)) (inner product; callers
    normalise vectors for cosine). Thread-safe; not shared across processes."""

    def __init__(self, okey: str, dim: int, uuid: str):
        self.okey, self.dim, self.uuid = okey, dim, uuid
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.applied_seq = 0
        self.saved_seq = 0                      # applied_seq of the last snapshot written/loaded
        self.by_seq: dict[int, set[int]] = {}   # content_seq -> chunk indices present
        self.lock = threading.RLock()

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    # ------------------------------------------------------------------- updates
    def _add(self, fids: list[int], vecs: list[np.ndarray]) -> None:
        if not fids:
            return
        ids = np.asarray(fids, dtype=np.int64)
        # A re-embedded chunk replaces its old vector (no duplicate ids in the index).
        old = [f for f in fids if split_id(f)[1] in self.by_seq.get(split_id(f)[0], ())]
        if old:
            self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(old, dtype=np.int64)))
        self.index.add_with_ids(np.stack(vecs).astype(np.float32, copy=False), ids)
        for f in fids:
            s, c = split_id(f)
            self.by_seq.setdefault(s, set()).add(c)

    def _remove_content(self, seq: int) -> None:
        if self.by_seq.pop(seq, None):
            self.index.remove_ids(faiss.IDSelectorRange(seq << ID_BITS, (seq + 1) << ID_BITS))

    def catch_up(self, txn) -> int:
        """Apply log entries after `applied_seq` from the snapshot `txn`; return how many."""
        with self.lock:
            fids: list[int] = []
            vecs: list[np.ndarray] = []
            n = 0
            for k, v in txn.scan("emblog", start=K.u64(self.applied_seq + 1)):
                seq = K.from_u64(k)
                e = json.loads(bytes(v))
                if e["op"] == "del":
                    self._add(fids, vecs)  # keep order: adds before this delete land first
                    fids, vecs = [], []
                    self._remove_content(e["s"])
                elif e["o"] == self.okey:
                    raw = txn.get("embeddings", e["k"].encode())
                    if raw is not None:  # None: deleted later in the log, skip
                        fids.append(faiss_id(e["s"], e["c"]))
                        vecs.append(np.frombuffer(raw, dtype=np.float32).copy())
                self.applied_seq = seq
                n += 1
            self._add(fids, vecs)
            return n

    def rebuild(self, txn) -> None:
        """Drop everything and re-read all this oracle's embeddings from the snapshot `txn`."""
        with self.lock:
            self.index.reset()
            self.by_seq.clear()
            suffix = ("/" + self.okey).encode()
            seqs: dict[bytes, int | None] = {}
            fids, vecs = [], []
            for k, v in txn.scan("embeddings"):
                if not k.endswith(suffix):
                    continue
                ck, idx = k[:-len(suffix)].rsplit(b"/", 1)
                if ck not in seqs:
                    raw = txn.get("contents", ck)
                    seqs[ck] = None if raw is None else json.loads(bytes(raw))["seq"]
                if seqs[ck] is not None:
                    fids.append(faiss_id(seqs[ck], int(idx)))
                    vecs.append(np.frombuffer(v, dtype=np.float32).copy())
            self._add(fids, vecs)
            self.applied_seq = log_head(txn)

    # ------------------------------------------------------------------- search
    def search(self, queries: np.ndarray, k: int, allowed_seqs: set[int]) -> tuple[np.ndarray, np.ndarray]:
        """queries [n, dim] float32 -> (scores [n, k'], faiss ids [n, k']), ids only from
        contents in `allowed_seqs` (-1 pads when fewer exist)."""
        with self.lock:
            seqs = [s for s in allowed_seqs if self.by_seq.get(s)]
            n = queries.shape[0]
            if not seqs or k <= 0:
                return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
            if len(seqs) == 1:
                s = seqs[0]
                sel = faiss.IDSelectorRange(s << ID_BITS, (s + 1) << ID_BITS)
            else:
                sel = faiss.IDSelectorBatch(np.fromiter(
                    (faiss_id(s, c) for s in seqs for c in self.by_seq[s]), dtype=np.int64))
            k = min(k, sum(len(self.by_seq[s]) for s in seqs))
            D, I = self.index.search(queries, k, params=faiss.SearchParameters(sel=sel))
            return D, I

    # ------------------------------------------------------------------- snapshots
    def save(self, path: Path) -> None:
        """Persist atomically: temp file, fsync, rename, fsync the directory."""
        with self.lock:
            head = json.dumps({"oracle": self.okey, "dim": self.dim, "applied_seq": self.applied_seq,
                               "env_uuid": self.uuid, "ntotal": self.ntotal}).encode()
            body = faiss.serialize_index(self.index)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(_SNAP_MAGIC + struct.pack("<I", len(head)) + head)
            f.write(memoryview(body))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.saved_seq = json.loads(head)["applied_seq"]
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    @classmethod
    def load(cls, path: Path, okey: str, dim: int, uuid: str) -> "ChunkIndex | None":
        """The snapshot at `path` if it belongs to this store and oracle, else None."""
        try:
            data = Path(path).read_bytes()
            if data[:8] != _SNAP_MAGIC:
                return None
            (hl,) = struct.unpack_from("<I", data, 8)
            head = json.loads(data[12:12 + hl])
            if head["oracle"] != okey or head["dim"] != dim or head["env_uuid"] != uuid:
                return None
            idx = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8, offset=12 + hl))
        except (OSError, ValueError, KeyError, RuntimeError):
            return None
        self = cls(okey, dim, uuid)
        self.index = idx
        self.applied_seq = self.saved_seq = head["applied_seq"]
        for fid in faiss.vector_to_array(idx.id_map):
            s, c = split_id(int(fid))
            self.by_seq.setdefault(s, set()).add(c)
        return self
