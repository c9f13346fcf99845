"""Temporal grounding: a query's moments in one video or across a tenant's videos
(query/moments.py says how a moment is made), and "when" questions answered from them.

Why "when" questions are answered here and not by the LLM. The LLM sees a chunk's
timestamp row, not its frames' times, so its best answer names a chunk's start: "32.0s"
for a card shown at 28-33 s, right only within the TOYWORLD tolerance of a chunk. The
visual oracle scores every frame, so the span it finds is the event's own, to a frame.
The LLM's answer stays available (when_by="lm", VIDEOKV_WHEN_BY) for comparison, as
count_by does for counting.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from videokv.kvstore import Status

from .answers import WHEN_BY  # noqa: F401
from .moments import (
    MAX_MOMENTS,
    MAX_VIDEOS,
    FrameRuns,
    Moment,
    merged,
    page,
    page_offset,
    rank_key,
    search_scope,
    standardised,
    text_source,
)

_ASKS_WHEN = re.compile(r"^\s*(?:when\b|at\s+what\s+(?:time|point|moment)\b|what\s+time\b)", re.IGNORECASE)
# A "when" question about the video's own time names something being seen, said or done in it;
# "When is the homework due?" asks what the video says, not when it says it.
_IN_VIDEO = re.compile(r"\b(?:appear(?:s|ed)?|show(?:s|n|ed)?(?:\s+up)?|seen|visible|occur(?:s|red)?|"
                       r"happen(?:s|ed)?|come\s+up|start(?:s|ed)?|begin|began|mentioned|said|spoken|announced)\b",
                       re.IGNORECASE)
_SUBJECT = re.compile(r"\b(?:did|does|do|was|were|is|are|has|have)\s+(?:(?:a|an|the)\s+)?(.+?)\s+"
                      r"(?:appear|show\s+up|occur|come\s+up|happen|start|begin|shown|seen|visible|been\s+shown)\b",
                      re.IGNORECASE)


def asks_when(question: str) -> bool:
    """True for "When did ... appear", "At what time was ... shown", "What time did ...
    happen" questions: when something was seen, said or done in the video."""
    return bool(_ASKS_WHEN.search(question)) and bool(_IN_VIDEO.search(question))


def clock(seconds: float) -> str:
    """75.4 -> "1:15"; 3725 -> "1:02:05"."""
    s = int(round(seconds))
    h, m, s = s // 3600, (s % 3600) // 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


_PRONOUNS = {"it", "this", "that", "they", "he", "she", "them"}
_SAID = {"ocr": "on screen", "speech": "said", "subtitle": "subtitled"}


def when_answer(question: str, m: Moment) -> str:
    """The sentence for a "when" question answered by its best moment."""
    found = _SUBJECT.search(question)
    what = found.group(1).strip() if found else ""
    what = f"The {what}" if what and what.lower() not in _PRONOUNS else "It"
    said = f', {_SAID.get(m.source, m.source)}: "{m.text}"' if m.text else ""
    return f"{what} appeared from {m.start:.1f}s to {m.end:.1f}s ({clock(m.start)}-{clock(m.end)}){said}."


@dataclass
class MomentFinder:
    """Moments of a QueryEngine's videos. runs: how frame runs are cut; text_chunks: the text
    index's best chunks of a video whose segments are scored (segments elsewhere are not
    embedded); per_video: a video's moments kept for a search across videos; scan_chunks: a
    video of more chunks has only the frames of its best scan_chunks / 2 chunks (by the
    indexed chunk vectors) and their neighbours scored, so a ten-hour video costs what a
    short one does."""

    engine: object
    runs: FrameRuns
    text_chunks: int = 8
    per_video: int = 32
    scan_chunks: int = 64

    def in_video(self, rec, query: str, hybrid: bool | None = None) -> list[Moment]:
        """All moments of one READY video for the query, best first. hybrid: rank text and
        visual moments by z-score (default: the video has a text channel). The query's
        vectors come from the engine, which keeps them for the questions asked last."""
        e = self.engine
        with_text = e.has_text(rec)
        hybrid = with_text if hybrid is None else hybrid
        out = self._visual(rec, e.question_vector(e.oracle, query), hybrid)
        if with_text:
            out += self._text(rec, e.question_vector(e.text_oracle, query), e.text_weight)
        return merged(out)

    def search(self, query: str, *, tenant: str, video_ids: list[str] | None = None, limit: int = 10,
               page_token: str | None = None, min_score: float | None = None) -> tuple[list[Moment], str | None]:
        """(a page of the query's moments across the tenant's READY videos, or `video_ids` of
        them, best first; the next page's token or None). Videos are those the chunk search
        ranks first (at most MAX_VIDEOS), each refined to its moments."""
        e = self.engine
        scope = search_scope(query, tenant, video_ids, min_score)
        offset = page_offset(page_token, scope)
        recs = ([e.store.get_video(v) for v in video_ids] if video_ids is not None
                else e.store.list_videos(tenant))
        recs = {r.video_id: r for r in recs if r.status is Status.READY and r.tenant == tenant}
        if not recs:
            return [], None
        # The candidates never depend on the page asked for, so that pages tile one list (and
        # a front's merge of every shard's first pages is a prefix of the merged whole).
        hits = e.search(query, MAX_MOMENTS, tenant=tenant, video_ids=list(recs) if video_ids is not None else None)
        order = list(dict.fromkeys(h.video_id for h in hits if h.video_id in recs))[:MAX_VIDEOS]
        hybrid = any(e.has_text(r) for r in recs.values())
        ranked: list[Moment] = []
        for vid in order:
            ranked += self.in_video(recs[vid], query, hybrid)[:self.per_video]
        ranked.sort(key=rank_key)
        if min_score is not None:
            ranked = [m for m in ranked if m.score >= min_score]
        return page(ranked[:MAX_MOMENTS], offset, limit, scope)

    def focus(self, rec, question: str, margin: float) -> tuple[dict[int, float] | None, list[Moment] | None]:
        """({chunk: score} of the chunks the question's best visual moment spans, when it is
        the one match, else None; the video's moments for the question, when they were
        found: the answer carries them, found once). The one match: the only moment that
        clears the oracle's calibrated frame threshold (an oracle without one: it outscores
        the next moment by `margin`). An adaptive top-k: one event that stands alone needs no
        other chunk at L, and every other card at L is one the LLM can misread. None when two
        moments match (an ordering question's two objects, a shape shown twice), none does,
        or the video has a text channel (the hybrid top-k decides; its moments are not
        searched here, so the text oracle's embeddings stay out of the time to first token)."""
        if self.engine.has_text(rec):
            return None, None
        moments = self.in_video(rec, question)
        found = [m for m in moments if m.source == "visual"]
        floor = self.runs.floor
        if not found or (floor is not None and found[0].score < floor):
            return None, moments
        if floor is not None:
            alone = len(found) == 1 or found[1].score < floor
        else:
            alone = len(found) == 1 or found[0].score - found[1].score >= margin
        if not alone:
            return None, moments
        best = found[0]
        return {s.index: best.score for s in rec.plan if s.t_start < best.end and best.start < s.t_end}, moments

    # ------------------------------------------------------------------ sources
    def _visual(self, rec, qv: np.ndarray, hybrid: bool) -> list[Moment]:
        """Frame runs where the video has per-frame vectors, else its chunks ("chunk")."""
        e = self.engine
        n, chunks = rec.chunks_total, None
        if n > self.scan_chunks:
            hits = e.store.search(e.oracle.identity, qv, self.scan_chunks // 2, video_ids=[rec.video_id])
            chunks = sorted({j for h in hits for j in (h.chunk - 1, h.chunk, h.chunk + 1) if 0 <= j < n})
        framed = frame_scores(e.store, e.oracle, rec, qv, chunks)
        if framed is None:
            scores, where = chunk_scores(e.store, e.oracle, rec, qv)
            source, runs = "chunk", [(i, i, float(s)) for i, s in enumerate(scores.tolist())]
        else:
            scores, where = framed
            starts = np.array([w[1] for w in where])
            ends = np.array([w[2] for w in where])
            adjacent = np.concatenate([[False], np.abs(starts[1:] - ends[:-1]) < 1e-6])
            source, runs = "visual", self.runs.runs(scores, adjacent)
        mu, sd = standardised(scores) if hybrid else (0.0, 1.0)
        return [Moment(rec.video_id, where[a][1], where[b][2], (peak - mu) / sd, source, where[a][0])
                for a, b, peak in runs]

    def _text(self, rec, tv: np.ndarray, weight: float) -> list[Moment]:
        """The text channel's segments inside the text index's best chunks, scored by the text
        oracle (z-scores over the segments scored, times the channel's weight)."""
        e = self.engine
        doc = e.store.get_transcript(rec.video_id) or {}
        hits = e.store.search(e.text_oracle.identity, tv, self.text_chunks, video_ids=[rec.video_id])
        plan = {s.index: s for s in rec.plan}
        spans = [(plan[h.chunk].t_start, plan[h.chunk].t_end) for h in hits if h.chunk in plan]
        segs = [s for s in doc.get("segments", []) if s.get("text", "").strip()
                and any(s["t_start"] < b and a < s["t_end"] for a, b in spans)]
        if not segs:
            return []
        texts = list(dict.fromkeys(s["text"] for s in segs))
        vecs = e.text_oracle.text_vectors(texts).numpy()
        by_text = dict(zip(texts, (vecs @ tv).tolist()))
        raw = np.array([by_text[s["text"]] for s in segs])
        mu, sd = standardised(raw)
        chunk_of = _chunk_finder(rec)
        return [Moment(rec.video_id, float(s["t_start"]), float(s["t_end"]), weight * (r - mu) / sd,
                       text_source(s["source"]), chunk_of(float(s["t_start"])), s["text"])
                for s, r in zip(segs, raw.tolist())]


def frame_scores(store, oracle, rec, qv: np.ndarray, chunks: Sequence[int] | None = None,
                 ) -> tuple[np.ndarray, list[tuple[int, float, float]]] | None:
    """(scores [F], where [F] (chunk, t_start, t_end)): the question vector's dot with every
    sampled frame's stored vector (of `chunks` only, when given), in temporal order; None
    when the video lacks per-frame vectors for one of them (stored before they were kept,
    or an oracle without them)."""
    want = sorted(chunks) if chunks is not None else list(range(rec.chunks_total))
    per_frame = store.frame_vectors(rec.video_id, oracle.identity, qv.size, want)
    if not want or len(per_frame) != len(want):
        return None
    plan = {s.index: s for s in rec.plan}
    where = []
    for i in want:
        p, k = plan[i], len(per_frame[i])
        dt = (p.t_end - p.t_start) / k     # sampled frames evenly over the chunk's span
        where += [(i, p.t_start + j * dt, p.t_start + (j + 1) * dt) for j in range(k)]
    return np.concatenate([per_frame[i] @ qv for i in want]), where


def chunk_scores(store, oracle, rec, qv: np.ndarray) -> tuple[np.ndarray, list[tuple[int, float, float]]]:
    """(scores [n], where [n] (chunk, t_start, t_end)): the oracle's indexed score of every
    chunk, in temporal order."""
    hits = {h.chunk: float(h.score) for h in
            store.search(oracle.identity, qv, rec.chunks_total, video_ids=[rec.video_id])}
    return (np.array([hits[s.index] for s in rec.plan], dtype=np.float32),
            [(s.index, s.t_start, s.t_end) for s in rec.plan])


def _chunk_finder(rec):
    """t seconds -> the index of the chunk whose span holds it (the last one past the end)."""
    starts = np.array([s.t_start for s in rec.plan])
    indices = [s.index for s in rec.plan]
    return lambda t: indices[max(0, int(np.searchsorted(starts, t, side="right")) - 1)]
