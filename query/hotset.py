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
from dataclasses import dataclass, field

import torch

from videokv.engine.chunkkv import ChunkKV, TokenKind
from videokv.kvstore import KVStore
from videokv.kvstore.codecs import Rows, row_count

H_TEXT = ("drop", "keep")


def check_h_text(h_text: str) -> str:
    if h_text not in H_TEXT:
        raise ValueError(f"h_text must be one of {', '.join(H_TEXT)}; got {h_text!r}")
    return h_text


def h_rows(kinds: torch.Tensor, h_text: str, has_line: bool = False) -> Rows:
    """kinds: [tokens] of a stored H part -> the rows a question pages (codecs.Rows: a slice
    when they are one run, as they are when the timestamp rows lead; else int64 indices), or
    None for all of them. has_line: the chunk has a text-channel line (kept whole)."""
    if h_text == "keep" or has_line:
        return None
    kept = (kinds != TokenKind.TEXT).nonzero().flatten()
    n = len(kept)
    if n and int(kept[-1]) - int(kept[0]) == n - 1:           # ascending and unique: one run
        return slice(int(kept[0]), int(kept[0]) + n)
    return kept


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
    chunk at H, or every gist group at G, in temporal order); offsets: each part's first row
    in kv; level: "H" or "G"."""

    kv: torch.Tensor
    parts: list[ChunkKV]
    offsets: list[int]
    level: str = "H"
    stored_nbytes: int = 0        # what reading it cost: its rows' stored bytes (a codec's are fewer)
    _at: dict = field(default_factory=dict, repr=False)

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def position(self, index: int) -> int:
        """The position in `parts` of the part with chunk (or group) `index`."""
        if not self._at:
            self._at.update({p.index: j for j, p in enumerate(self.parts)})
        return self._at[index]


def part_rows(r, video_id: str, index: int, level: str, fingerprint: str, h_text: str, text_chunks: set[int]):
    """(the stored blob view, the row indices a question pages [kept] or None for all) of one
    part: an H part by h_rows, every other level whole."""
    v = r.blob(video_id, index, level, fingerprint=fingerprint)
    return v, (h_rows(v.kinds, h_text, index in text_chunks) if level == "H" else None)


def as_part(r, video_id: str, index: int, level: str, kv: torch.Tensor, kinds: torch.Tensor,
            fingerprint: str) -> ChunkKV:
    """A ChunkKV over kv [layers, 2, kv_heads, T, head_dim] with the stored part's metadata (a
    G part spans its group: frames and times from its first to its last chunk)."""
    meta = r.chunk_record(video_id, index)
    frame_end, t_end = meta.frame_end, meta.t_end
    if level == "G":
        rec = r.video(video_id)
        last = rec.plan[min(index + int((rec.extra or {}).get("gist_chunks", 1)), rec.chunks_total) - 1]
        frame_end, t_end = last.frame_end, last.t_end
    return ChunkKV(kv[:, 0], kv[:, 1], kinds, index=index, frame_start=meta.frame_start, frame_end=frame_end,
                   t_start=meta.t_start, t_end=t_end, level=level, fingerprint=fingerprint)


def hot_indices(rec, level: str) -> list[int]:
    """The parts of a hot set at `level`: every chunk (H), or every gist group's first chunk (G)."""
    if level == "H":
        return list(range(rec.chunks_total))
    group = int((rec.extra or {}).get("gist_chunks", 0))
    if not group:
        raise ValueError(f"video {rec.video_id} has no gist level (ingested with VIDEOKV_GIST_CHUNKS=0)")
    return list(range(0, rec.chunks_total, group))


def read_hot_set(store: KVStore, video_id: str, fingerprint: str, h_text: str = "drop", pin: bool = False,
                 level: str = "H") -> HotSet:
    """Read a video's prefix and every part at `level` out of the store into one (pinned)
    buffer: the one copy out of LMDB's map."""
    with store.reader() as r:
        rec = r.video(video_id)
        text_chunks = text_chunks_of(rec)
        wanted = [(-1, "full")] + [(i, level) for i in hot_indices(rec, level)]
        views = [part_rows(r, video_id, i, lvl, fingerprint, h_text, text_chunks) for i, lvl in wanted]
        h0 = views[0][0].header
        total = sum(row_count(x, v.header.tokens) for v, x in views)
        kv = torch.empty(h0.layers, 2, h0.kv_heads, total, h0.head_dim, dtype=h0.dtype, pin_memory=pin)
        codecs = {v.header.codec for v, _ in views}
        codec = codecs.pop() if len(codecs) == 1 else None
        if codec is not None:                                       # dequantized on the way, together
            codec.decode_many([(v.parts, x) for v, x in views], kv)
        parts, offsets, off, stored = [], [], 0, 0
        for (i, lvl), (v, x) in zip(wanted, views):
            n = row_count(x, v.header.tokens)
            stored += stored_bytes(v, x)
            kinds = v.kinds if x is None else v.kinds[x]
            dst = kv[:, :, :, off:off + n]
            if codec is None:
                v.take_into(dst, x)                                 # as stored, or decoded blob by blob
            parts.append(as_part(r, video_id, i, lvl, dst, kinds.clone(), rec.fingerprint))
            offsets.append(off)
            off += n
    return HotSet(kv, parts, offsets, level, stored)


def stored_bytes(v, rows) -> int:
    """The stored bytes of a blob view's `rows` (None: all): its share of the blob's payload."""
    tokens = v.header.tokens
    return v.nbytes * row_count(rows, tokens) // tokens if tokens else v.nbytes


class HotSetCache:
    """Hot sets by (video, level), least recently used first out once `cache_bytes` is
    exceeded (a set larger than the whole budget is used once and not kept). Thread-safe.

    h_text: "drop" or "keep" (above); pin: hot sets in pinned memory (CUDA)."""

    def __init__(self, store: KVStore, fingerprint: str, cache_bytes: int = 1 << 30, h_text: str = "drop",
                 pin: bool = False):
        self.store, self.fingerprint = store, fingerprint
        self.cache_bytes = cache_bytes
        self.h_text = check_h_text(h_text)
        self.pin = pin
        self._sets: OrderedDict[tuple[str, str], HotSet] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0           # gets answered from memory / read from the store
        self._lock = threading.Lock()

    def get(self, video_id: str, level: str = "H") -> tuple[HotSet, int]:
        """(the video's hot set at `level`, bytes read from the store to get it: 0 when hot)."""
        key = (video_id, level)
        with self._lock:
            hot = self._sets.get(key)
            if hot is not None:
                self._sets.move_to_end(key)
                self.hits += 1
                return hot, 0
            self.misses += 1
        hot = read_hot_set(self.store, video_id, self.fingerprint, self.h_text, self.pin, level)
        with self._lock:
            if hot.nbytes <= self.cache_bytes and key not in self._sets:
                self._sets[key] = hot
                self.bytes += hot.nbytes
                while self.bytes > self.cache_bytes:
                    _, old = self._sets.popitem(last=False)
                    self.bytes -= old.nbytes
        return hot, hot.stored_nbytes

    def evict(self, video_id: str) -> None:
        """Forget a video's hot sets (it was deleted or re-ingested)."""
        with self._lock:
            for key in [k for k in self._sets if k[0] == video_id]:
                self.bytes -= self._sets.pop(key).nbytes

    def __contains__(self, video_id: str) -> bool:
        return any(k[0] == video_id for k in self._sets)
