"""Exceptions raised by the KV store. All derive from `KVStoreError`."""

from __future__ import annotations

from videokv.errors import VideoKVError


class KVStoreError(VideoKVError):
    """Base class for every kvstore error."""

    code = "store_error"

    http_status = 500  # a store fault is ours, unless a subclass says otherwise


class CorruptBlobError(KVStoreError):
    """A stored KV blob failed its checksum, or has an unknown magic/version/dtype.

    Never decode such bytes: they would be fed to the model as garbage.
    """

    code = "corrupt_kv"

    def __init__(self, reason: str, *, video_id: str = "?", index: int | str = "?", level: str = "?", key: str = ""):
        self.reason, self.video_id, self.index, self.level, self.key = reason, video_id, index, level, key
        where = f"video {video_id} chunk {index} level {level}"
        super().__init__(f"corrupt KV blob for {where}: {reason}" + (f" (key {key})" if key else ""))


class VideoNotFoundError(KVStoreError, KeyError):
    code = "video_not_found"
    http_status = 404

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "video not found"


class ChunkNotFoundError(KVStoreError, KeyError):
    code = "chunk_not_found"
    http_status = 404

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "chunk not found"


class FingerprintMismatchError(KVStoreError):
    """A caller asked for blobs made by another model/config than the video's."""

    code = "reingest_required"

    http_status = 409


class IllegalTransition(KVStoreError):
    """A status change the lifecycle does not allow (catalog.TRANSITIONS), e.g. a READY video
    marked FAILED by a stale retry."""

    code = "illegal_transition"
    http_status = 409


class NotReadyError(KVStoreError):
    """`mark_ready` refused: some chunks (or their index entries) are not committed."""

    code = "chunks_missing"

    def __init__(self, video_id: str, missing: list[int], missing_embeddings: list[int]):
        self.video_id, self.missing, self.missing_embeddings = video_id, missing, missing_embeddings
        parts = []
        if missing:
            parts.append(f"{len(missing)} chunk(s) not committed (first: {_head(missing)})")
        if missing_embeddings:
            parts.append(f"{len(missing_embeddings)} chunk(s) without index entries (first: {_head(missing_embeddings)})")
        super().__init__(f"video {video_id} cannot be READY: " + "; ".join(parts))


def _head(xs: list[int], n: int = 5) -> str:
    return ", ".join(map(str, xs[:n])) + (", ..." if len(xs) > n else "")
