"""The video catalog and the transactional chunk writes.

Records are JSON in LMDB. A *video* (VideoRecord) is what a tenant sees; its KV data
belongs to its *content* (fingerprint + sha256 of the file). Two uploads of the same file
with the same fingerprint share one content: blobs, chunk records and embeddings are
stored once; the content remembers which videos use it and is deleted with the last one.
The same tenant uploading the same file again gets its existing video back.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Iterable

import numpy as np

from videokv.engine.chunkkv import ChunkSpan

from . import keys as K
from .backend import StorageBackend
from .errors import ChunkNotFoundError, IllegalTransition, VideoNotFoundError


class Status(str, Enum):
    QUEUED = "QUEUED"
    INGESTING = "INGESTING"
    READY = "READY"
    FAILED = "FAILED"


# A video's lifecycle. Deletion is allowed from every state and removes the record, after
# which every write (set_status, put_chunk, mark_ready, update) finds no record and raises:
# a worker still busy with a deleted video can never bring it back. READY is final.
TRANSITIONS = {
    Status.QUEUED: {Status.QUEUED, Status.INGESTING, Status.FAILED},
    Status.INGESTING: {Status.INGESTING, Status.QUEUED, Status.FAILED},
    Status.FAILED: {Status.FAILED, Status.QUEUED, Status.INGESTING},
    Status.READY: {Status.READY},
}


@dataclass
class VideoRecord:
    video_id: str
    content_hash: str
    fingerprint: str
    tenant: str = "default"
    filename: str = ""
    container: str = ""
    codec: str = ""
    duration: float = 0.0
    fps: float = 0.0
    sampled_frames: int = 0
    plan: list[ChunkSpan] = field(default_factory=list)   # set when the last chunk commits
    status: Status = Status.QUEUED
    reason: str = ""
    chunks_done: int = 0
    created: float = 0.0
    updated: float = 0.0
    extra: dict = field(default_factory=dict)
    chunks_expected: int = 0      # while streaming: the chunks the sampling plan will give
    sample_fps: float = 0.0       # the rate it was sampled at (below the setting when capped)

    @property
    def chunks_total(self) -> int:
        return len(self.plan)

    @property
    def content_key(self) -> str:
        return K.content_key(self.fingerprint, self.content_hash)

    def to_json(self) -> bytes:
        d = asdict(self)
        d["status"] = self.status.value
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, b) -> "VideoRecord":
        d = json.loads(bytes(b))
        d["plan"] = [ChunkSpan.from_dict(s) for s in d["plan"]]
        d["status"] = Status(d["status"])
        return cls(**d)


@dataclass
class ChunkRecord:
    """Per-chunk metadata. tokens/nbytes: per stored level. oracles: embedding keys present."""

    index: int
    frame_start: int
    frame_end: int
    t_start: float
    t_end: float
    dtype: str
    tokens: dict[str, int]
    nbytes: dict[str, int]
    oracles: list[str]
    created: float
    text_line: bool = False       # the chunk has a text-channel line (kept whole at H)
    visual: dict[str, int] = field(default_factory=dict)   # per level: its visual (non-text) rows

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, b) -> "ChunkRecord":
        return cls(**json.loads(bytes(b)))

    def span(self) -> ChunkSpan:
        return ChunkSpan(self.index, self.frame_start, self.frame_end, self.t_start, self.t_end)


def _plan(plan) -> list[ChunkSpan]:
    out = [p if isinstance(p, ChunkSpan) else ChunkSpan.from_dict(p) for p in plan or []]
    if [p.index for p in out] != list(range(len(out))):
        raise ValueError("chunk plan indices must be 0..n-1 in order")
    return out


def _frames(v) -> np.ndarray:
    """Per-frame vectors as float16 [frames, dim]."""
    if hasattr(v, "detach"):
        v = v.detach().cpu().float().numpy()
    a = np.asarray(v, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] == 0 or not np.isfinite(a).all():
        raise ValueError(f"frame vectors must be a finite [frames, dim] matrix, got shape {a.shape}")
    return np.ascontiguousarray(a.astype(np.float16))


def _vec(v) -> np.ndarray:
    """An embedding as float32 [dim] (accepts numpy, torch, lists)."""
    if hasattr(v, "detach"):
        v = v.detach().cpu().float().numpy()
    a = np.ascontiguousarray(np.asarray(v, dtype=np.float32).reshape(-1))
    if a.size == 0 or not np.isfinite(a).all():
        raise ValueError("embedding must be a non-empty finite vector")
    return a


# ----------------------------------------------------------------------- txn helpers
def load_video(txn, video_id: str) -> VideoRecord:
    raw = txn.get("catalog", video_id.encode())
    if raw is None:
        raise VideoNotFoundError(f"no video {video_id!r}")
    return VideoRecord.from_json(raw)


def load_chunk(txn, rec: VideoRecord, index: int) -> ChunkRecord:
    raw = txn.get("chunks", K.chunk_key(rec.content_key, index))
    if raw is None:
        raise ChunkNotFoundError(f"video {rec.video_id} has no committed chunk {index}")
    return ChunkRecord.from_json(raw)


def tenant_videos(txn, tenant: str) -> list[VideoRecord]:
    """Every video record the tenant owns (any status), via the tenants index."""
    prefix = K.tenant_key(tenant, "")
    ids = [key[len(prefix):].decode() for key, _ in txn.scan("tenants", prefix=prefix, keys_only=True)]
    return [load_video(txn, vid) for vid in ids]


def content_seq(txn, ck: str) -> int | None:
    raw = txn.get("contents", ck.encode())
    return None if raw is None else json.loads(bytes(raw))["seq"]


def _counter(txn, name: bytes) -> int:
    """Increment and return a meta counter (inside the caller's write txn)."""
    raw = txn.get("meta", name)
    n = (K.from_u64(raw) if raw is not None else 0) + 1
    txn.put("meta", name, K.u64(n))
    return n


def _log(txn, entry: dict) -> None:
    """Append to the embedding change log (FAISS indexes replay it; see index.py)."""
    txn.put("emblog", K.u64(_counter(txn, b"log_seq")), json.dumps(entry).encode())


# ----------------------------------------------------------------------- the catalog
class Catalog:
    def __init__(self, env: StorageBackend):
        self.env = env

    def create_video(self, *, content_hash: str, fingerprint: str, tenant: str = "default",
                     plan: Iterable = (), **fields) -> VideoRecord:
        """Register a video, or return this tenant's existing one for the same content."""
        ck = K.content_key(fingerprint, content_hash)
        K.check_token("tenant", tenant)
        now = time.time()
        rec = VideoRecord(video_id=secrets.token_hex(6), content_hash=content_hash, fingerprint=fingerprint,
                          tenant=tenant, plan=_plan(plan), created=now, updated=now, **fields)

        def fn(txn):
            raw = txn.get("contents", ck.encode())
            content = json.loads(bytes(raw)) if raw is not None else None
            if content is not None:
                for vid, owner in content["videos"].items():
                    if owner == tenant:
                        return load_video(txn, vid)  # dedup: same tenant, same bytes
            else:
                content = {"seq": _counter(txn, b"content_seq"), "videos": {}}
                txn.put("seqs", K.u64(content["seq"]), ck.encode())
            content["videos"][rec.video_id] = tenant
            txn.put("contents", ck.encode(), json.dumps(content).encode())
            txn.put("catalog", rec.video_id.encode(), rec.to_json())
            txn.put("tenants", K.tenant_key(tenant, rec.video_id), b"")
            return rec

        return self.env.write(fn)

    def find_by_content(self, content_hash: str, fingerprint: str, tenant: str | None = None) -> VideoRecord | None:
        """A video over these bytes made with this fingerprint (this tenant's, if given)."""
        ck = K.content_key(fingerprint, content_hash)
        with self.env.read() as txn:
            raw = txn.get("contents", ck.encode())
            if raw is None:
                return None
            for vid, owner in json.loads(bytes(raw))["videos"].items():
                if tenant is None or owner == tenant:
                    return load_video(txn, vid)
        return None

    def get_video(self, video_id: str) -> VideoRecord:
        with self.env.read() as txn:
            return load_video(txn, video_id)

    def list_videos(self, tenant: str | None = None) -> list[VideoRecord]:
        with self.env.read() as txn:
            if tenant is None:
                return [VideoRecord.from_json(v) for _, v in txn.scan("catalog")]
            return tenant_videos(txn, tenant)

    def _update(self, video_id: str, change) -> VideoRecord:
        def fn(txn):
            rec = load_video(txn, video_id)
            change(txn, rec)
            rec.updated = time.time()
            txn.put("catalog", video_id.encode(), rec.to_json())
            return rec
        return self.env.write(fn)

    def set_status(self, video_id: str, status: Status | str, reason: str = "") -> VideoRecord:
        """QUEUED/INGESTING/FAILED (with reason), along `TRANSITIONS`; READY only through
        `mark_ready`. A deleted video raises VideoNotFoundError: nothing brings it back."""
        status = Status(status)
        if status is Status.READY:
            raise ValueError("use mark_ready(): it checks that every chunk is committed")

        def change(txn, rec):
            if status not in TRANSITIONS[rec.status]:
                raise IllegalTransition(f"video {video_id} is {rec.status.value}: it cannot become {status.value}")
            rec.status, rec.reason = status, reason
        return self._update(video_id, change)

    def update_fields(self, video_id: str, **fields) -> VideoRecord:
        """Set probe results (duration, fps, plan, ...) or `extra` after creation."""
        if "plan" in fields:
            fields["plan"] = _plan(fields["plan"])
        bad = set(fields) - {"filename", "container", "codec", "duration", "fps", "sampled_frames", "plan", "extra",
                             "chunks_expected", "sample_fps"}
        if bad:
            raise ValueError(f"cannot update {sorted(bad)}")

        def change(txn, rec):
            for k, v in fields.items():
                setattr(rec, k, v)
        return self._update(video_id, change)

    def delete_video(self, video_id: str) -> bool:
        """Remove the video; with the last video over its content, also every blob, chunk
        record and embedding of that content, and log the index deletion. Freed LMDB pages
        are reused by later writes."""
        def fn(txn):
            raw = txn.get("catalog", video_id.encode())
            if raw is None:
                return False
            rec = VideoRecord.from_json(raw)
            ck = rec.content_key
            txn.delete("catalog", video_id.encode())
            txn.delete("tenants", K.tenant_key(rec.tenant, video_id))
            craw = txn.get("contents", ck.encode())
            if craw is None:
                return True
            content = json.loads(bytes(craw))
            content["videos"].pop(video_id, None)
            if content["videos"]:
                txn.put("contents", ck.encode(), json.dumps(content).encode())
                return True
            prefix = (ck + "/").encode()
            for name in ("blobs", "chunks", "embeddings"):
                txn.delete_prefix(name, prefix)
            txn.delete("contents", ck.encode())
            txn.delete("seqs", K.u64(content["seq"]))
            _log(txn, {"op": "del", "s": content["seq"]})
            return True

        return self.env.write(fn)
