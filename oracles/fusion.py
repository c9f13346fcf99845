"""Which chunks a question re-loads at L: the visual oracle alone, or hybrid with the text
oracle when the video has a text channel.

Hybrid scoring. Cosine scores of two encoders are not on one scale, so each oracle's
scores are standardised over the video's chunks (z-scores) and a chunk's score is the
best of its z-scores: a chunk that stands out in *either* channel (the one frame showing
the red card, the one chunk whose scoreboard reads "GOAL: MARTINEZ") ranks high, and a
channel that is flat for this question (all chunks alike) adds nothing. A chunk without
text scores 0 in the text channel (no words in common), so the text z-scores are taken
over all chunks, not only the few that have text. On a short video (n chunks) no z-score
can exceed sqrt(n - 1): there a clear match in one channel and noise in the other can tie. A sum would let a weak match in both channels beat a clear match
in one; reciprocal-rank fusion would throw the margins away.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

# z-scores are computed with at least this spread, so a channel whose scores barely vary
# (every chunk equally unrelated) cannot blow tiny differences up into a confident pick.
MIN_STD = 0.02


@dataclass
class Scored:
    chunk: Hashable      # a chunk index (one video) or (video_id, chunk) (a search across videos)
    score: float


def zscores(scores: dict) -> dict:
    if not scores:
        return {}
    v = np.fromiter(scores.values(), dtype=np.float64)
    mu, sd = float(v.mean()), max(float(v.std()), MIN_STD)
    return {c: (s - mu) / sd for c, s in scores.items()}


def fuse(per_oracle: list[dict], weights: list[float] | None = None) -> dict:
    """{chunk: score} per oracle -> {chunk: max over oracles of weight * z-score}."""
    weights = weights or [1.0] * len(per_oracle)
    out: dict = {}
    for scores, w in zip(per_oracle, weights):
        for c, z in zscores(scores).items():
            out[c] = max(out.get(c, -np.inf), w * z)
    return out


def top(scores: dict, k: int) -> list[Scored]:
    """The k best chunks, best first (ties: earlier chunk first)."""
    best = sorted(scores.items(), key=lambda cs: (-cs[1], cs[0]))[:k]
    return [Scored(c, float(s)) for c, s in best]
