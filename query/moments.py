"""Moments: where in a video (or in an archive) something is shown, said or written, at frame
precision: `{video_id, start, end, score, source}` rather than a 16-s chunk.

How a moment is found. Retrieval ranks chunks (query/retrieval.py); a moment refines a
chunk's relevance to the frames or text lines that carry it:
- visual: the oracle's vector of every sampled frame is stored at ingest (the toy-world
  dual encoder, CLIP, SigLIP). A moment is a run of consecutive frames whose score clears
  the oracle's calibrated frame threshold (the span counter's: `count_thresholds["frame"]`)
  or, for an oracle not calibrated, the midpoint between the video's median frame score and
  its best; each run is then trimmed to the frames within `rel` of the way from the median
  to its own peak, so a long run around a short event does not swallow its neighbours.
- ocr / speech / subtitle: the text channel's segments keep their own times; a segment is
  scored by the text oracle against the query (only segments inside the text index's best
  chunks are embedded, so a search costs the same on a ten-hour video as on a short one).
- chunk: a video stored without per-frame vectors (an oracle that has only chunk vectors,
  or a video stored before they were kept) falls back to its best chunks' spans and says
  so in `source`.
Near-duplicates merge: moments of one video and one source that overlap or touch (gap at
most `merge_gap_s`) become one, and a moment that overlaps a better one of another source by
IoU >= `dedupe_iou` is dropped. Scores are the oracle's cosine where one channel searched,
and each channel's z-score (over the frames / segments it scored, oracles/fusion.py) where
text and visual moments are ranked together: cosines of two encoders are not on one scale.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from videokv.oracles.fusion import MIN_STD

from .answers import QueryError

SOURCES = ("visual", "ocr", "speech", "subtitle", "chunk")
_TEXT_SOURCE = {"ocr": "ocr", "asr": "speech", "subtitle": "subtitle"}
MAX_MOMENTS = 1000           # the deepest a search pages
MAX_VIDEOS = 64              # videos a search across a tenant refines to moments


@dataclass
class Moment:
    """[start, end) seconds of one video; chunk: the chunk its start lies in; text: what was
    read or said (text sources only)."""

    video_id: str
    start: float
    end: float
    score: float
    source: str
    chunk: int
    text: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["start"], d["end"], d["score"] = round(self.start, 3), round(self.end, 3), round(self.score, 4)
        return d


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Temporal intersection over union of two [start, end) spans (0 for empty ones)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


@dataclass
class FrameRuns:
    """Runs of frames that show the thing asked about, from per-frame scores.

    floor: the oracle's calibrated frame threshold (None, or no frame clears it: the midpoint
    between the median and the best score of the frames scored); rel: a run keeps its frames within rel of the way
    from the median to the run's peak; max_gap: frames below the floor allowed inside a run
    (one missed frame must not split an event in two)."""

    floor: float | None = None
    rel: float = 0.5
    max_gap: int = 1

    def runs(self, scores: np.ndarray, adjacent: np.ndarray) -> list[tuple[int, int, float]]:
        """scores [F]: the frames' scores in temporal order; adjacent [F] bool: frame i follows
        frame i-1 with no frame between (False across a gap in what was loaded). -> [(first,
        last, peak score)] frame positions, in temporal order."""
        if scores.size == 0:
            return []
        base, best = float(np.median(scores)), float(scores.max())
        relative = base + 0.5 * (best - base)
        if self.floor is not None and best >= self.floor:
            return self._cut(scores, adjacent, self.floor, base)
        # Nothing clears the calibrated floor: the best the video has, as a search engine
        # would show it (min_score filters such weak moments out).
        return self._cut(scores, adjacent, relative, base)

    def _cut(self, scores: np.ndarray, adjacent: np.ndarray, floor: float, base: float) -> list[tuple[int, int, float]]:
        out: list[tuple[int, int, float]] = []
        run: list[int] = []
        for i in np.flatnonzero(scores >= floor).tolist():
            if run and i - run[-1] <= self.max_gap + 1 and bool(adjacent[run[-1] + 1:i + 1].all()):
                run.append(i)
                continue
            if run:
                out.append(self._trimmed(scores, run, base))
            run = [i]
        if run:
            out.append(self._trimmed(scores, run, base))
        return out

    def _trimmed(self, scores: np.ndarray, run: list[int], base: float) -> tuple[int, int, float]:
        seg = scores[run[0]:run[-1] + 1]
        peak = float(seg.max())
        keep = np.flatnonzero(seg >= peak - self.rel * (peak - base))
        return run[0] + int(keep[0]), run[0] + int(keep[-1]), peak


def merged(moments: list[Moment], merge_gap_s: float = 1.0, dedupe_iou: float = 0.8) -> list[Moment]:
    """Near-duplicates merged (see the module docstring); best first."""
    by_key: dict[tuple[str, str], list[Moment]] = {}
    for m in sorted(moments, key=lambda m: (m.video_id, m.source, m.start)):
        group = by_key.setdefault((m.video_id, m.source), [])
        last = group[-1] if group else None
        if last is not None and m.source != "chunk" and m.start - last.end <= merge_gap_s \
                and (m.source == "visual" or m.text == last.text):
            last.end, last.score = max(last.end, m.end), max(last.score, m.score)
        else:
            group.append(Moment(**asdict(m)))
    kept: list[Moment] = []
    for m in sorted((m for g in by_key.values() for m in g), key=rank_key):
        if not any(k.video_id == m.video_id and k.source != m.source and iou((k.start, k.end), (m.start, m.end))
                   >= dedupe_iou for k in kept):
            kept.append(m)
    return kept


def rank_key(m: Moment | dict) -> tuple:
    """Best first, by the score as reported (4 decimals), so that a front that merges
    shards' pages of reported moments (their dicts) ranks them exactly as each shard did."""
    get = m.__getitem__ if isinstance(m, dict) else m.__getattribute__
    return (-round(get("score"), 4), get("video_id"), get("start"), get("source"))


def standardised(scores: np.ndarray) -> tuple[float, float]:
    """(mean, spread) of a channel's scores, for its moments' z-scores."""
    return (float(scores.mean()), max(float(scores.std()), MIN_STD)) if scores.size else (0.0, 1.0)


# ------------------------------------------------------------------ pages
def page_token(offset: int, scope: str) -> str:
    """An opaque token for the page starting at `offset` of the search named by `scope`."""
    raw = json.dumps({"o": offset, "s": scope}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def page_offset(token: str | None, scope: str) -> int:
    """The offset a page token names (0 for none); QueryError for a token of another search."""
    if not token:
        return 0
    try:
        d = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset, same = int(d["o"]), d["s"] == scope
    except (ValueError, KeyError, TypeError):
        raise QueryError("page_token is not one this service issued") from None
    if not same:
        raise QueryError("page_token belongs to another search (the query, videos or min_score differ)")
    if not 0 <= offset <= MAX_MOMENTS:
        raise QueryError(f"page_token points past the {MAX_MOMENTS} moments a search returns")
    return offset


def search_scope(query: str, tenant: str, video_ids: list[str] | None, min_score: float | None) -> str:
    """What a page token is bound to: the same query over the same videos and floor."""
    raw = json.dumps([query, tenant, sorted(video_ids) if video_ids is not None else None, min_score])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def page(ranked: list[Moment], offset: int, limit: int, scope: str) -> tuple[list[Moment], str | None]:
    """(moments[offset:offset + limit], the next page's token or None)."""
    got = ranked[offset:offset + limit]
    more = offset + limit < min(len(ranked), MAX_MOMENTS)
    return got, (page_token(offset + limit, scope) if more else None)


def text_source(source: str) -> str:
    """A transcript segment's source ("ocr", "asr", "subtitle") as a moment's."""
    return _TEXT_SOURCE.get(source, source)
