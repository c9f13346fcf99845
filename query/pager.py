"""`KVPager`: loads the KV parts of a question's `Layout` (budget.py), in temporal order, on
the CPU.

The prompt prefix and the layout's base level (H for every chunk, or the gist level G for
every group when the layout has G parts) come from the shared hot-set cache (`hotset.py`,
which also says why H parts are paged without their timestamp rows); the other parts (the
selected chunks at L; with a G base, the chunks at H) are read from the store per question.
"""

from __future__ import annotations

from dataclasses import dataclass

from videokv.engine.chunkkv import ChunkKV

from .budget import Layout
from .hotset import HotSetCache, as_part, part_rows, stored_bytes, text_chunks_of


@dataclass
class PagedKV:
    """parts: prefix then one ChunkKV per layout part in temporal order (pre-RoPE, host
    memory). bytes_in_context: KV bytes of all parts; bytes_read: bytes read from the store
    now."""

    parts: list[ChunkKV]
    bytes_in_context: int
    bytes_read: int
    layout: Layout


def base_level(layout: Layout) -> str:
    """The level paged from the hot set: G when the layout uses the gist level, else H."""
    return "G" if any(lvl == "G" for _, lvl in layout.parts) else "H"


class KVPager:
    def __init__(self, hot: HotSetCache):
        self.hot = hot
        self.store, self.fingerprint = hot.store, hot.fingerprint

    @property
    def h_text(self) -> str:
        return self.hot.h_text

    def evict(self, video_id: str) -> None:
        self.hot.evict(video_id)

    def load(self, video_id: str, layout: Layout) -> PagedKV:
        base = base_level(layout)
        hot, read = self.hot.get(video_id, base)
        parts: list[ChunkKV] = [hot.parts[0]]
        with self.store.reader() as r:
            text_chunks = text_chunks_of(r.video(video_id))
            for i, lvl in layout.parts:
                if lvl == base:
                    parts.append(hot.parts[hot.position(i)])
                    continue
                v, rows = part_rows(r, video_id, i, lvl, self.fingerprint, self.h_text, text_chunks)
                kinds = v.kinds if rows is None else v.kinds[rows]
                part = as_part(r, video_id, i, lvl, v.take(rows), kinds.clone(), r.video(video_id).fingerprint)
                read += stored_bytes(v, rows)
                parts.append(part)
        return PagedKV(parts, sum(p.nbytes for p in parts), read, layout)
