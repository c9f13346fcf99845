"""`KVPager`: loads the KV parts a question needs, in temporal order, on the CPU.

Selected chunks come at L level, every other chunk at H level (or all L / all H). The
prompt prefix and all-H set come from the shared hot-set cache (`hotset.py`, which also
says why H parts are paged without their timestamp rows), so a repeated question on a hot
video reads only its selected chunks' L-KVs from the store.
"""

from __future__ import annotations

from dataclasses import dataclass

from videokv.engine.chunkkv import ChunkKV

from .hotset import HotSetCache


@dataclass
class PagedKV:
    """parts: prefix then one ChunkKV per chunk in temporal order (pre-RoPE, host memory).
    bytes_in_context: KV bytes of all parts; bytes_read: bytes read from the store now."""

    parts: list[ChunkKV]
    bytes_in_context: int
    bytes_read: int
    levels: dict[int, str]


class KVPager:
    def __init__(self, hot: HotSetCache):
        self.hot = hot
        self.store, self.fingerprint = hot.store, hot.fingerprint

    @property
    def h_text(self) -> str:
        return self.hot.h_text

    def evict(self, video_id: str) -> None:
        self.hot.evict(video_id)

    def load(self, video_id: str, n_chunks: int, levels: dict[int, str]) -> PagedKV:
        """levels: chunk index -> "L" or "H" for every chunk 0..n_chunks-1."""
        hot, read = self.hot.get(video_id, n_chunks)
        want_l = sorted(i for i, lvl in levels.items() if lvl == "L")
        l_parts = {}
        if want_l:
            with self.store.reader() as r:
                for i in want_l:
                    l_parts[i] = r.chunk(video_id, i, "L", fingerprint=self.fingerprint, copy=True)
            read += sum(p.nbytes for p in l_parts.values())
        parts = [hot.parts[0]] + [l_parts.get(i, hot.parts[i + 1]) for i in range(n_chunks)]
        return PagedKV(parts, sum(p.nbytes for p in parts), read, levels)
