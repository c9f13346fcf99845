"""`KVPager`: loads the KV parts a question needs, in temporal order.

Selected chunks come at L level, every other chunk at H level (or all L / all H). A video's
prompt prefix and all-H set stay cached (LRU, bounded bytes), so a repeated question on a
hot video reads only its selected chunks' L-KVs from the store.

H parts are paged without their timestamp rows by default (`h_text="drop"`): the stored
H-KV keeps its timestamp (chunk prefill attends to it, DESIGN.md), but a question reads only
the visual rows of the chunks it does not select. On the toy default (8 tokens a frame) a 16x
H chunk is 8 visual rows and ~10 timestamp rows, so dense timestamps would more than double
what every unselected chunk costs; the chunks a question selects come at L with their
timestamps. `bench needle` measured bi-level accuracy no worse for it (0.43 vs 0.39).
Chunks with a text-channel line (issue 9: OCR, speech, subtitles) keep all their text rows,
timestamp included: that line is what the chunk says, and it exists only as text.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from videokv.engine.chunkkv import ChunkKV, TokenKind
from videokv.kvstore import KVStore

H_TEXT = ("drop", "keep")


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


def check_h_text(h_text: str) -> str:
    if h_text not in H_TEXT:
        raise ValueError(f"h_text must be one of {', '.join(H_TEXT)}; got {h_text!r}")
    return h_text


@dataclass
class PagedKV:
    """parts: prefix then one ChunkKV per chunk in temporal order (pre-RoPE, host memory).
    bytes_in_context: KV bytes of all parts; bytes_read: bytes read from the store now."""

    parts: list[ChunkKV]
    bytes_in_context: int
    bytes_read: int
    levels: dict[int, str]


class KVPager:
    def __init__(self, store: KVStore, fingerprint: str, cache_bytes: int = 1 << 30, h_text: str = "drop"):
        self.store = store
        self.fingerprint = fingerprint
        self.cache_bytes = cache_bytes
        self.h_text = check_h_text(h_text)
        self._hot: OrderedDict[str, list[ChunkKV]] = OrderedDict()  # video -> [prefix, H0, H1, ...]
        self._hot_bytes = 0

    def _h_set(self, video_id: str, n_chunks: int) -> tuple[list[ChunkKV], int]:
        """(prefix + all H parts, bytes read to get them)."""
        hot = self._hot.get(video_id)
        if hot is not None:
            self._hot.move_to_end(video_id)
            return hot, 0
        with self.store.reader() as r:
            parts = [r.chunk(video_id, -1, "full", fingerprint=self.fingerprint, copy=True)]
            text_chunks = text_chunks_of(r.video(video_id))
            for i in range(n_chunks):
                view = r.chunk(video_id, i, "H", fingerprint=self.fingerprint)
                rows = h_rows(view.kinds, self.h_text, i in text_chunks)
                if rows is None:
                    rows = torch.arange(view.tokens)
                parts.append(view.with_kv(view.keys.index_select(2, rows), view.values.index_select(2, rows),
                                          view.kinds[rows], "H"))
        size = sum(p.nbytes for p in parts)
        if size <= self.cache_bytes:
            self._hot[video_id] = parts
            self._hot_bytes += size
            while self._hot_bytes > self.cache_bytes:
                _, old = self._hot.popitem(last=False)
                self._hot_bytes -= sum(p.nbytes for p in old)
        return parts, size

    def evict(self, video_id: str) -> None:
        old = self._hot.pop(video_id, None)
        if old is not None:
            self._hot_bytes -= sum(p.nbytes for p in old)

    def load(self, video_id: str, n_chunks: int, levels: dict[int, str]) -> PagedKV:
        """levels: chunk index -> "L" or "H" for every chunk 0..n_chunks-1."""
        h_parts, read = self._h_set(video_id, n_chunks)
        want_l = sorted(i for i, lvl in levels.items() if lvl == "L")
        l_parts = {}
        if want_l:
            with self.store.reader() as r:
                for i in want_l:
                    l_parts[i] = r.chunk(video_id, i, "L", fingerprint=self.fingerprint, copy=True)
            read += sum(p.nbytes for p in l_parts.values())
        parts = [h_parts[0]] + [l_parts.get(i, h_parts[i + 1]) for i in range(n_chunks)]
        return PagedKV(parts, sum(p.nbytes for p in parts), read, levels)
