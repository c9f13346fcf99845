"""Zero-copy read sessions: KV tensors that are views of LMDB's memory map.

    with store.reader() as r:                      # one MVCC snapshot, never blocks writers
        v = r.blob(video_id, 12, "H")              # BlobView, tensors alias the mmap
        v.load_into(pinned[...])                   # the single copy: mmap -> pinned host buffer
        ck = r.chunk(video_id, 12, "H")            # ChunkKV whose tensors are views
    # leaving the block ends the snapshot: views from it must not be used any more

Views are read-only (writing into them crashes the process: the map is read-only) and
valid only inside the `with` block. `copy=True` variants return ordinary tensors.
"""

from __future__ import annotations

import torch

from videokv.engine.chunkkv import ChunkKV

from . import blob as blobfmt
from . import keys as K
from .catalog import ChunkRecord, VideoRecord, load_chunk, load_video
from .errors import ChunkNotFoundError, FingerprintMismatchError


class ReadSession:
    """Reads inside one LMDB read transaction (use through `KVStore.reader()`)."""

    def __init__(self, txn):
        self.txn = txn
        self._videos: dict[str, VideoRecord] = {}

    def video(self, video_id: str) -> VideoRecord:
        rec = self._videos.get(video_id)
        if rec is None:
            rec = self._videos[video_id] = load_video(self.txn, video_id)
        return rec

    def chunk_record(self, video_id: str, index: int) -> ChunkRecord:
        return load_chunk(self.txn, self.video(video_id), index)

    def _check_fp(self, rec: VideoRecord, fingerprint: str | None) -> None:
        if fingerprint is not None and fingerprint != rec.fingerprint:
            raise FingerprintMismatchError(f"video {rec.video_id} was encoded with fingerprint "
                                           f"{rec.fingerprint!r}; refusing to read it as {fingerprint!r}")

    def raw(self, video_id: str, index: int, level: str):
        """The blob's memoryview into the map (no decoding, no checksum)."""
        rec = self.video(video_id)
        mv = self.txn.get("blobs", K.blob_key(rec.content_key, index, level))
        if mv is None:
            raise ChunkNotFoundError(f"video {video_id} has no committed chunk {index} at level {level!r}")
        return mv

    def blob(self, video_id: str, index: int, level: str, *, fingerprint: str | None = None,
             verify: bool = True) -> blobfmt.BlobView:
        """Decode chunk `index` (-1 = prompt prefix) at `level` as views of the map.

        fingerprint: the caller's model fingerprint; a mismatch raises instead of handing
            over KVs another model/config made.
        Raises CorruptBlobError (naming video, chunk, level) on a checksum/format error.
        """
        rec = self.video(video_id)
        self._check_fp(rec, fingerprint)
        mv = self.raw(video_id, index, level)
        where = {"video_id": video_id, "index": index, "level": level,
                 "key": K.blob_key(rec.content_key, index, level).decode()}
        return blobfmt.decode(mv, verify=verify, where=where)

    def chunk(self, video_id: str, index: int, level: str, *, fingerprint: str | None = None,
              copy: bool = False, verify: bool = True) -> ChunkKV:
        """ChunkKV with keys/values [layers, kv_heads, tokens, head_dim] (views unless copy)."""
        v = self.blob(video_id, index, level, fingerprint=fingerprint, verify=verify)
        meta = self.chunk_record(video_id, index)
        kv = v.kv                                  # a codec blob dequantizes here, once
        keys, values, kinds = kv[:, 0], kv[:, 1], v.kinds
        if copy:
            cf = torch.contiguous_format
            keys, values, kinds = keys.clone(memory_format=cf), values.clone(memory_format=cf), kinds.clone()
        return ChunkKV(keys=keys, values=values, kinds=kinds, index=index,
                       frame_start=meta.frame_start, frame_end=meta.frame_end, t_start=meta.t_start,
                       t_end=meta.t_end, level=level, fingerprint=self.video(video_id).fingerprint)

    def load_into(self, video_id: str, index: int, level: str, out: torch.Tensor, *,
                  fingerprint: str | None = None) -> blobfmt.BlobHeader:
        """Verify and copy one blob into `out` [layers, 2, kv_heads, tokens, head_dim]
        (e.g. a slice of a pinned host buffer): LMDB -> out with exactly one copy."""
        v = self.blob(video_id, index, level, fingerprint=fingerprint)
        v.load_into(out)
        return v.header

    def header(self, video_id: str, index: int, level: str) -> blobfmt.BlobHeader:
        """Shape/dtype of a blob without checksumming it (to size buffers before paging)."""
        where = {"video_id": video_id, "index": index, "level": level}
        return blobfmt.read_header(self.raw(video_id, index, level), where)
