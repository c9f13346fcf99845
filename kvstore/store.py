"""`KVStore`: the store facade over one home (catalog, KV blobs, embeddings, FAISS indexes)."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import commits as C
from . import keys as K
from .catalog import Catalog, ChunkRecord, Status, VideoRecord, content_seq, load_video, tenant_videos
from .env import DEFAULT_MAP_SIZE, LmdbEnv, open_env
from .errors import ChunkNotFoundError
from .index import ChunkIndex, env_uuid, log_head, split_id
from .reader import ReadSession


@dataclass(frozen=True)
class Hit:
    video_id: str
    chunk: int
    score: float


class KVStore:
    """The store facade over one home directory: LMDB at home/kv.lmdb, FAISS snapshots at
    home/faiss/."""

    def __init__(self, home: str | os.PathLike, *, map_size: int = DEFAULT_MAP_SIZE,
                 snapshot_every: int = 1000, kv_codec=None):
        # snapshot_every: persist an oracle's FAISS snapshot after this many newly applied
        # log entries (0 = only on save_index()), so a restart replays little.
        # kv_codec: how new chunks' K,V are stored (codecs.py; None: as they are). Reads
        # follow each blob's own header, so a store may hold several.
        self.snapshot_every = snapshot_every
        self.kv_codec = kv_codec
        home = Path(home)
        self.home = home
        self.env: LmdbEnv = open_env(home / "kv.lmdb", map_size=map_size)
        self.catalog = Catalog(self.env)
        self._indexes: dict[str, ChunkIndex] = {}
        self._ilock = threading.Lock()
        self._uuid: str | None = None

    # ------------------------------------------------------------------ catalog
    def create_video(self, *, content_hash: str, fingerprint: str, tenant: str = "default",
                     plan: Iterable = (), **fields) -> VideoRecord:
        """New QUEUED video, or this tenant's existing video over the same content+fingerprint
        (check `.status`: READY means nothing to ingest). fields: filename, container,
        codec, duration, fps, sampled_frames, extra."""
        return self.catalog.create_video(content_hash=content_hash, fingerprint=fingerprint,
                                         tenant=tenant, plan=plan, **fields)

    def get_video(self, video_id: str) -> VideoRecord:
        return self.catalog.get_video(video_id)

    def list_videos(self, tenant: str | None = None) -> list[VideoRecord]:
        return self.catalog.list_videos(tenant)

    def find_by_content(self, content_hash: str, fingerprint: str, tenant: str | None = None) -> VideoRecord | None:
        return self.catalog.find_by_content(content_hash, fingerprint, tenant)

    def set_status(self, video_id: str, status: Status | str, reason: str = "") -> VideoRecord:
        return self.catalog.set_status(video_id, status, reason)

    def update_video(self, video_id: str, **fields) -> VideoRecord:
        return self.catalog.update_fields(video_id, **fields)

    def put_chunk(self, video_id: str, levels, embeddings: Mapping[str, object] | None = None,
                  frame_vectors: Mapping[str, object] | None = None, text_line: bool = False) -> bool:
        """Commit one chunk's levels + record + embeddings {oracle_id: [dim]} (+ per-frame
        vectors {oracle_id: [frames, dim]}, kept as float16, not indexed) atomically.
        False if already committed (idempotent resume)."""
        levels = list(levels.values() if isinstance(levels, Mapping) else levels)
        return bool(C.put_chunks(self.env, video_id, [C.ChunkWrite(levels, embeddings or {}, frame_vectors or {},
                                                                   text_line)], codec=self.kv_codec))

    def put_chunks(self, video_id: str, writes: list[C.ChunkWrite], transcript_part: list[dict] | None = None,
                   transcript_open: list[dict] | None = None, part_at: int | None = None) -> int:
        """A group commit: several chunks (and the text segments final so far) in one
        transaction; returns how many chunks were new (commits.py)."""
        return C.put_chunks(self.env, video_id, writes, transcript_part, transcript_open, part_at, self.kv_codec)

    def release_pages(self) -> None:
        """Let go of the store's pages this process has mapped (env.release_pages says why)."""
        self.env.release_pages()

    def open_text_segments(self, video_id: str) -> list[dict]:
        return C.open_text_segments(self.env, video_id)

    def committed_chunks(self, video_id: str) -> list[ChunkRecord]:
        """Committed chunk records, prefix excluded, by index (0..k-1: chunks commit in order)."""
        return C.committed(self.env, video_id)

    def finish(self, video_id: str, plan, oracles: Iterable[str] = (), extra: Mapping | None = None) -> VideoRecord:
        """READY with its final plan, once every chunk is committed and indexed (commits.py)."""
        return C.finish(self.env, video_id, plan, oracles, extra)

    def frame_vectors(self, video_id: str, oracle_id: str, dim: int,
                      chunks: Sequence[int] | None = None) -> dict[int, np.ndarray]:
        """{chunk index: [frames, dim] float32} for the chunks (all, or `chunks`) stored with
        per-frame vectors of this oracle (none: {})."""
        out = {}
        okey = K.oracle_key(oracle_id, dim)
        with self.env.read() as txn:
            rec = load_video(txn, video_id)
            for i in (range(rec.chunks_total) if chunks is None else chunks):
                raw = txn.get("embeddings", K.frames_key(rec.content_key, i, okey))
                if raw is not None:
                    out[i] = np.frombuffer(raw, dtype=np.float16).reshape(-1, dim).astype(np.float32)
        return out

    def put_prefix(self, video_id: str, levels) -> bool:
        """The prompt prefix (ChunkKV index -1), stored like a chunk."""
        levels = list(levels.values() if isinstance(levels, Mapping) else levels)
        if any(c.index != -1 for c in levels):
            raise ValueError("the prompt prefix must have index -1")
        return self.put_chunk(video_id, levels)

    def put_transcript(self, video_id: str, transcript: dict) -> None:
        C.put_transcript(self.env, video_id, transcript)

    def get_transcript(self, video_id: str) -> dict | None:
        return C.get_transcript(self.env, video_id)

    def missing_chunks(self, video_id: str) -> list[int]:
        """Plan indices with no committed chunk, ascending."""
        done = {c.index for c in self.committed_chunks(video_id)}
        return [s.index for s in self.get_video(video_id).plan if s.index not in done]

    def first_missing_chunk(self, video_id: str) -> int | None:
        missing = self.missing_chunks(video_id)
        return missing[0] if missing else None

    def has_prefix(self, video_id: str) -> bool:
        with self.env.read() as txn:
            rec = load_video(txn, video_id)
            return txn.get("chunks", K.chunk_key(rec.content_key, -1)) is not None

    def mark_ready(self, video_id: str, oracles: Iterable[str] = (), require_prefix: bool = True) -> VideoRecord:
        """READY over the record's plan (see `finish`)."""
        return C.finish(self.env, video_id, self.get_video(video_id).plan, oracles, None, require_prefix)

    def delete_video(self, video_id: str) -> bool:
        return self.catalog.delete_video(video_id)

    # ------------------------------------------------------------------ reads
    @contextmanager
    def reader(self) -> Iterator[ReadSession]:
        """A zero-copy read session (one MVCC snapshot); see reader.py for the rules."""
        with self.env.read() as txn:
            yield ReadSession(txn)

    def read_chunk(self, video_id: str, index: int, level: str, *, fingerprint: str | None = None):
        """ChunkKV with its own (copied) tensors; safe to keep."""
        with self.reader() as r:
            return r.chunk(video_id, index, level, fingerprint=fingerprint, copy=True)

    def chunk_records(self, video_id: str) -> list[ChunkRecord]:
        """Committed chunk records (prefix first, then by index)."""
        with self.reader() as r:
            rec = r.video(video_id)
            out = []
            for i in [-1] + [s.index for s in rec.plan]:
                try:
                    out.append(r.chunk_record(video_id, i))
                except ChunkNotFoundError:
                    pass
            return out

    # ------------------------------------------------------------------ index
    def _snapshot_path(self, okey: str) -> Path:
        return self.home / "faiss" / (okey.replace(":", "_") + ".faiss")

    def index(self, oracle_id: str, dim: int) -> ChunkIndex:
        """This process's index for the oracle, loaded from its snapshot or rebuilt, and
        caught up with LMDB."""
        okey = K.oracle_key(oracle_id, dim)
        with self._ilock:
            idx = self._indexes.get(okey)
            if idx is None:
                self._uuid = self._uuid or env_uuid(self.env)
                idx = ChunkIndex.load(self._snapshot_path(okey), okey, dim, self._uuid)
                with self.env.read() as txn:
                    if idx is None or idx.applied_seq > log_head(txn):
                        idx = ChunkIndex(okey, dim, self._uuid)
                        idx.rebuild(txn)
                self._indexes[okey] = idx
        with self.env.read() as txn:
            idx.catch_up(txn)
        if self.snapshot_every and idx.applied_seq - idx.saved_seq >= self.snapshot_every:
            idx.save(self._snapshot_path(okey))
        return idx

    def rebuild_index(self, oracle_id: str, dim: int) -> ChunkIndex:
        idx = self.index(oracle_id, dim)
        with self.env.read() as txn:
            idx.rebuild(txn)
        return idx

    def save_index(self, oracle_id: str, dim: int) -> Path:
        """Persist a caught-up snapshot of the oracle's index (atomic replace)."""
        path = self._snapshot_path(K.oracle_key(oracle_id, dim))
        self.index(oracle_id, dim).save(path)
        return path

    def search(self, oracle_id: str, query, k: int, *, video_ids: Iterable[str] | None = None,
               tenant: str | None = None):
        """Top-k chunks by inner product with query [dim] (-> list[Hit]) or [n, dim]
        (-> list[list[Hit]]), best first.

        Scope (at least one is required): `video_ids` (any status) and/or `tenant` (its
        READY videos; with video_ids, only those the tenant owns). Never returns a chunk
        outside the scope.
        """
        if video_ids is None and tenant is None:
            raise ValueError("search needs a scope: video_ids and/or tenant")
        q = np.asarray(query.detach().cpu().float().numpy() if hasattr(query, "detach") else query,
                       dtype=np.float32)
        single = q.ndim == 1
        q = np.ascontiguousarray(q.reshape(1, -1) if single else q)
        idx = self.index(oracle_id, q.shape[1])   # catch up first: no lost writes
        seq_to_videos: dict[int, list[str]] = {}
        with self.env.read() as txn:
            if video_ids is not None:
                recs = [load_video(txn, v) for v in video_ids]
                if tenant is not None:
                    recs = [r for r in recs if r.tenant == tenant]
            else:
                recs = [r for r in tenant_videos(txn, tenant) if r.status is Status.READY]
            for r in recs:
                s = content_seq(txn, r.content_key)
                if s is not None:
                    seq_to_videos.setdefault(s, []).append(r.video_id)
        D, I = idx.search(q, k, set(seq_to_videos))
        out = []
        for drow, irow in zip(D, I):
            hits = []
            for score, fid in zip(drow, irow):
                if fid < 0:
                    continue
                s, c = split_id(int(fid))
                for vid in seq_to_videos.get(s, ()):   # .get: re-check the scope
                    hits.append(Hit(vid, c, float(score)))
            out.append(hits[:k])
        return out[0] if single else out

    # ------------------------------------------------------------------ disk
    # A small file kept beside the store and given up when the disk fills: LMDB needs a few
    # free pages to record anything, even that an ingest failed because the disk is full.
    RESERVE_BYTES = 1 << 20

    @property
    def _reserve(self) -> Path:
        return self.home / "space-reserve"

    def ensure_reserve(self) -> bool:
        """Put the reserve back if it is gone and there is room for it; True if it is there."""
        if self._reserve.exists():
            return True
        try:
            with open(self._reserve, "wb") as f:
                f.write(b"\0" * self.RESERVE_BYTES)
                f.flush()
                os.fsync(f.fileno())
            return True
        except OSError:
            self._reserve.unlink(missing_ok=True)
            return False

    def release_reserve(self) -> bool:
        """Free the reserve (the disk is full and something must still be written)."""
        try:
            self._reserve.unlink()
            return True
        except FileNotFoundError:
            return False

    def close(self) -> None:
        self.env.close()
