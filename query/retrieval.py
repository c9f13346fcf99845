"""Retrieval: a question's best chunks, in one video or across a tenant's videos, by the
visual oracle alone or hybrid with the text oracle (oracles/fusion.py says how scores of
two encoders are fused). One code path serves a question's top-k and `/v1/search`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from videokv.kvstore import Hit, KVStore
from videokv.oracles.fusion import fuse, top


@dataclass(frozen=True)
class Channel:
    """One oracle's part in a search: its identity, the question's vector [dim], the weight of
    its z-scores, and the score a chunk it did not return counts as (None: its lowest
    returned score; the text channel: 0, a chunk without text matches no words)."""

    oracle_id: str
    vector: np.ndarray
    weight: float = 1.0
    floor: float | None = None


def search(store: KVStore, channels: list[Channel], k: int, candidates: int, *,
           video_ids: list[str] | None = None, tenant: str | None = None) -> list[Hit]:
    """The k best chunks in the scope (video_ids and/or tenant, as KVStore.search), best first.
    One channel: its own ranking. Several: each returns its `candidates` best chunks; over
    their union a chunk's score is the best of its weighted z-scores."""
    scope = {"video_ids": video_ids, "tenant": tenant}
    if len(channels) == 1:
        c = channels[0]
        return store.search(c.oracle_id, c.vector, k, **scope)
    per = [{(h.video_id, h.chunk): h.score for h in store.search(c.oracle_id, c.vector, candidates, **scope)}
           for c in channels]
    union = sorted(set().union(*per))
    filled = []
    for c, got in zip(channels, per):
        floor = c.floor if c.floor is not None else min(got.values(), default=0.0)
        filled.append({key: got.get(key, floor) for key in union})
    return [Hit(s.chunk[0], s.chunk[1], s.score) for s in top(fuse(filled, [c.weight for c in channels]), k)]
