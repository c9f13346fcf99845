"""Hot sets: a video's prompt prefix and every chunk's H-KV, read from the store once and kept
in host memory for the questions that follow (LRU, bounded bytes). Both pagers (`pager.py`
on the CPU, `device_pager.py` on the GPU) page from the same cache.

A hot set is one buffer kv [layers, 2, kv_heads, T, head_dim] (pinned when the cache pins,
so its host-to-device copy is one DMA), with one ChunkKV view per part (prefix first) and
each part's first row. H parts are kept without their timestamp rows by default
(`h_text="drop"`): the stored H-KV keeps its timestamp (chunk prefill attends to it,
DESIGN.md), but a question reads only the visual rows of the chunks it does not select. On
the toy default (8 tokens a frame) a 16x H chunk is 8 visual rows and ~10 timestamp rows,
so dense timestamps would more than double what every unselected chunk costs; the chunks a
question selects come at L with their timestamps. `bench needle` measured bi-level
accuracy no worse for it (0.43 vs 0.39). Chunks with a text-channel line (OCR, speech,
subtitles) keep all their text rows: that line is what the chunk says, and it exists only
as text.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from videokv.engine.chunkkv import ChunkKV, TokenKind
from videokv.kvstore import KVStore

H_TEXT = ("drop", "keep")


def check_h_text(h_text: str) -> str:
    if h_text not in H_TEXT:
        raise ValueError(f"h_text must be one of {', '.join(H_TEXT)}; got {h_text!r}")
    return h_text


def h_rows(kinds: torch.Tensor, h_text: str, has_line: bool = False) -> torch.Tensor | None:
    """kinds: [tokens] of a stored H part -> the row indices a question pages ([kept], int64),
    or None for all of them. has_line: the chunk has a text-channel line (kept whole)."""
    if h_text == "keep" or has_line:
        return None
    return (kinds != TokenKind.TEXT).nonzero().flatten()


def text_chunks_of(rec) -> set[int]:
    """The chunks of a video record with a text-channel line (ingest records them); a text
    video stored before that was recorded: all of its chunks."""
    extra = rec.extra or {}
    if "text_chunks" in extra:
        return set(extra["text_chunks"])
    return set(range(rec.chunks_total)) if extra.get("text_oracle") else set()


@dataclass
class HotSet:
    """kv: [layers, 2, kv_heads, T, head_dim]; parts: ChunkKV views of it (prefix, then every
    chunk at H, in temporal order); offsets: each part's first row in kv."""

    kv: torch.Tensor
    parts: list[ChunkKV]
    offsets: list[int]

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


def read_hot_set(store: KVStore, video_id: str, n_chunks: int, fingerprint: str, h_text: str = "drop",
                 pin: bool = False) -> HotSet:
    """Read a video's prefix and H parts out of the store into one (pinned) buffer: the one
    copy out of LMDB's map."""
    with store.reader() as r:
        rec = r.video(video_id)
        wanted = [(-1, "full")] + [(i, "H") for i in range(n_chunks)]
        views = [r.blob(video_id, i, lvl, fingerprint=fingerprint) for i, lvl in wanted]
        text_chunks = text_chunks_of(rec)
        rows = [None] + [h_rows(v.kinds, h_text, i in text_chunks) for i, v in enumerate(views[1:])]
        h0 = views[0].header
        total = sum(v.header.tokens if x is None else len(x) for v, x in zip(views, rows))
        kv = torch.empty(h0.layers, 2, h0.kv_heads, total, h0.head_dim, dtype=h0.dtype, pin_memory=pin)
        parts, offsets, off = [], [], 0
        for (i, lvl), v, x in zip(wanted, views, rows):
            src, kinds = (v.kv, v.kinds) if x is None else (v.kv.index_select(3, x), v.kinds[x])
            dst = kv[:, :, :, off:off + src.shape[3]]
            dst.copy_(src)
            meta = r.chunk_record(video_id, i)
            parts.append(ChunkKV(dst[:, 0], dst[:, 1], kinds.clone(), index=i, frame_start=meta.frame_start,
                                 frame_end=meta.frame_end, t_start=meta.t_start, t_end=meta.t_end, level=lvl,
                                 fingerprint=rec.fingerprint))
            offsets.append(off)
            off += src.shape[3]
    return HotSet(kv, parts, offsets)


class HotSetCache:
    """Hot sets by video, least recently used first out once `cache_bytes` is exceeded (a
    set larger than the whole budget is used once and not kept). Thread-safe.

    h_text: "drop" or "keep" (above); pin: hot sets in pinned memory (CUDA)."""

    def __init__(self, store: KVStore, fingerprint: str, cache_bytes: int = 1 << 30, h_text: str = "drop",
                 pin: bool = False):
        self.store, self.fingerprint = store, fingerprint
        self.cache_bytes = cache_bytes
        self.h_text = check_h_text(h_text)
        self.pin = pin
        self._sets: OrderedDict[str, HotSet] = OrderedDict()
        self.bytes = 0
        self._lock = threading.Lock()

    def get(self, video_id: str, n_chunks: int) -> tuple[HotSet, int]:
        """(the video's hot set, bytes read from the store to get it: 0 when it was hot)."""
        with self._lock:
            hot = self._sets.get(video_id)
            if hot is not None:
                self._sets.move_to_end(video_id)
                return hot, 0
        hot = read_hot_set(self.store, video_id, n_chunks, self.fingerprint, self.h_text, self.pin)
        with self._lock:
            if hot.nbytes <= self.cache_bytes and video_id not in self._sets:
                self._sets[video_id] = hot
                self.bytes += hot.nbytes
                while self.bytes > self.cache_bytes:
                    _, old = self._sets.popitem(last=False)
                    self.bytes -= old.nbytes
        return hot, hot.nbytes

    def evict(self, video_id: str) -> None:
        """Forget a video's hot set (it was deleted or re-ingested)."""
        with self._lock:
            old = self._sets.pop(video_id, None)
            if old is not None:
                self.bytes -= old.nbytes

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._sets
