"""`KVPager`: loads the KV parts a question needs, in temporal order.

Selected chunks come at L level, every other chunk at H level (or all L / all H). A video's
prompt prefix and all-H set stay cached (LRU, bounded bytes), so a repeated question on a
hot video reads only its selected chunks' L-KVs from the store.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from videokv.engine.chunkkv import ChunkKV
from videokv.kvstore import KVStore


@dataclass
class PagedKV:
    """parts: prefix then one ChunkKV per chunk in temporal order (pre-RoPE, host memory).
    bytes_in_context: KV bytes of all parts; bytes_read: bytes read from the store now."""

    parts: list[ChunkKV]
    bytes_in_context: int
    bytes_read: int
    levels: dict[int, str]


class KVPager:
    def __init__(self, store: KVStore, fingerprint: str, cache_bytes: int = 1 << 30):
        self.store = store
        self.fingerprint = fingerprint
        self.cache_bytes = cache_bytes
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
            parts += [r.chunk(video_id, i, "H", fingerprint=self.fingerprint, copy=True) for i in range(n_chunks)]
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
