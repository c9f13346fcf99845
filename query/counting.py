"""Counting questions ("How many times did a red circle appear?") answered from the oracle's
scores instead of by the LLM.

Why. The embedded default's 135M LLM does not count across chunks: with every chunk's
L-KV in context it still says "1 time" for a pair seen twice, and refines that trained it
on counting taught it to guess "2-3 times" instead (toyworld/weights/MODEL_CARD.md,
"Tried, not shipped: counting"). The toy-world oracle, though, scores single frames: every
sampled frame's vector is stored at ingest, and a frame showing the thing asked about
scores ~0.55 against the question where a look-alike (same colour, other shape) scores
~0.3. So a count is the number of *runs* of consecutive frames whose score clears a
threshold, and the answer names every span it counted, so a user can check it.

Videos stored without per-frame vectors are counted over the indexed chunk vectors
instead, which is much worse: two appearances in one chunk or in adjacent chunks count
once, and a chunk busy with several events dilutes each one's score. `videokv bench
counting` measured it: per frame right 97%, per chunk 74%, the LLM 60% (it always says 1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_ASKS_COUNT = re.compile(r"\bhow\s+(?:many\s+times|often)\b", re.IGNORECASE)
_SUBJECT = re.compile(r"\bhow\s+(?:many\s+times|often)\s+(?:did|does|do|was|were|has|have|is|are)\s+"
                      r"(?:(?:a|an|the)\s+)?(.+?)\s+(?:appear|show\s+up|occur|come\s+up|been\s+shown|"
                      r"shown|seen|visible)\b", re.IGNORECASE)


def asks_count(question: str) -> bool:
    """True for "how many times ..." / "how often ..." questions."""
    return bool(_ASKS_COUNT.search(question))


def subject_of(question: str) -> str | None:
    """"How many times did a red circle appear?" -> "red circle" (None when not parsed)."""
    m = _SUBJECT.search(question)
    return m.group(1).strip() if m else None


@dataclass
class SpanCounter:
    """Counts appearances as runs of consecutive scores that clear a threshold.

    Two resolutions, each with its own threshold (oracle-specific, calibrated by
    `videokv bench counting`): per frame (`frame_threshold`), over the per-frame vectors an
    oracle such as the toy-world dual encoder stores at ingest, and per chunk (`threshold`),
    over the indexed chunk vectors, for videos stored without per-frame vectors.
    max_gap: entries below the threshold allowed inside one run (0: any ends it)."""

    threshold: float
    frame_threshold: float | None = None
    max_gap: int = 0

    def spans(self, scores: Mapping[int, float], threshold: float | None = None) -> list[list[int]]:
        """{position (chunk or frame index): score} -> the runs, each a list of positions in
        temporal order; runs in temporal order. threshold: default self.threshold."""
        t = self.threshold if threshold is None else threshold
        hits = sorted(c for c, s in scores.items() if s >= t)
        runs: list[list[int]] = []
        for c in hits:
            if runs and c - runs[-1][-1] <= self.max_gap + 1:
                runs[-1].append(c)
            else:
                runs.append([c])
        return runs

    def answer(self, question: str, spans: list[tuple[float, float]]) -> str:
        """The sentence for the counted spans [(t_start, t_end) seconds]."""
        what = subject_of(question)
        what = f"The {what}" if what else "It"
        n = len(spans)
        if n == 0:
            return f"{what} did not appear (0 times): nothing in the video matches it."
        where = ", ".join(f"{a:.0f}-{b:.0f}s" for a, b in spans)
        return f"{what} appeared {n} time{'s' if n != 1 else ''} ({where})."


def counter_for(oracle, threshold: float | None = None) -> SpanCounter | None:
    """The span counter for an oracle: `threshold` (per chunk) if given, else the thresholds
    calibrated for it, which travel with its weights (`oracle.count_thresholds`: {"chunk",
    "frame"}; the toy world's are in its manifest, written by `videokv bench counting
    --install`); None when it has neither (its counting questions then go to the LLM)."""
    cal = getattr(oracle, "count_thresholds", None) or {}
    t = threshold if threshold is not None else cal.get("chunk")
    return None if t is None else SpanCounter(float(t), cal.get("frame"))
