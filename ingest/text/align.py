"""Align text segments to the chunk plan and render each chunk's text line, capped in tokens.

    lines = chunk_texts(segments, [(0.0, 16.0), (16.0, 32.0)], max_tokens=48,
                        count_tokens=lambda s: len(tokenizer(s).input_ids))
    # ['Screen: "HOME 0  AWAY 0 | GOAL MARTINEZ". Speech: "what a goal".', '']

Rules:
  - a segment with `words` (speech) gives a chunk the words whose midpoint lies in it, so
    an utterance over a chunk boundary is split, never repeated;
  - any other segment gives its whole text to every chunk it overlaps;
  - within a chunk and source, identical texts appear once, in first-seen order;
  - on screen, a *changing field* (texts that differ only in their digits: a game clock
    ticking every second, a scoreboard) keeps its first and last value in the chunk, so a
    clock cannot fill the line with 16 readings and push a one-off banner out;
  - the line (labels and quotes included) is at most `max_tokens` tokens: the budget is
    shared across the sources present (a source needing less than an equal share leaves
    the rest to the others) and text is cut on word boundaries. When a source must drop
    items, the ones visible longest in the chunk are kept (a scoreboard over a game clock
    that shows a new time every second).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Sequence

from videokv.engine.prefill import text_line

from .segments import SOURCES, TextSegment

# How a source's items are joined inside its quotes: screen lines are separate things;
# speech and subtitle cues continue each other.
_JOIN = {"ocr": " | ", "asr": " ", "subtitle": " "}


class _Item:
    __slots__ = ("text", "weight", "order")

    def __init__(self, text: str, weight: float, order: int):
        self.text, self.weight, self.order = text, weight, order


def _clean(text: str) -> str:
    # Straight double quotes would end the quoted span early in the rendered line.
    return " ".join(text.replace('"', "'").split())


def _chunk_items(ordered: Sequence[tuple[int, TextSegment]], t0: float, t1: float) -> dict[str, list[_Item]]:
    """Per source, the chunk's items in first-seen order (deduplicated, weights summed).
    ordered: (original index, segment) pairs that may touch the chunk, by (t_start, index)."""
    items: dict[str, list[_Item]] = {s: [] for s in SOURCES}
    seen: dict[tuple[str, str], _Item] = {}
    for order, seg in ordered:
        if seg.source not in items:
            continue
        if seg.words:
            words = [w for w, a, b in seg.words if t0 <= (a + b) / 2 < t1]
            text = _clean(" ".join(words))
            if text:  # speech is not deduplicated: "no no no" is what was said
                items[seg.source].append(_Item(text, float("inf"), order))
            continue
        overlap = min(seg.t_end, t1) - max(seg.t_start, t0)
        if overlap <= 0 and not (seg.t_start == seg.t_end and t0 <= seg.t_start < t1):
            continue
        text = _clean(seg.text)
        if not text:
            continue
        key = (seg.source, text.casefold())
        if key in seen:
            seen[key].weight += max(overlap, 0.0)
        else:
            seen[key] = _Item(text, max(overlap, 0.0), order)
            items[seg.source].append(seen[key])
    items["ocr"] = _collapse_fields(items["ocr"])
    return {s: v for s, v in items.items() if v}


def _by_chunk(segments: Sequence[TextSegment], spans: Sequence[tuple[float, float]]):
    """Each chunk's candidate segments, (original index, segment) by (t_start, index): every
    segment goes to the chunks its time span (and its words) reaches, found by bisection, so
    aligning a long video is linear in its chunks and segments, not their product."""
    starts = [float(a) for a, _ in spans]
    out: list[list[tuple[int, TextSegment]]] = [[] for _ in spans]
    for order, seg in sorted(enumerate(segments), key=lambda p: (p[1].t_start, p[0])):
        lo_t, hi_t = seg.t_start, seg.t_end
        if seg.words:
            mids = [(a + b) / 2 for _, a, b in seg.words]
            lo_t, hi_t = min(lo_t, *mids), max(hi_t, *mids)
        first = max(0, bisect_right(starts, lo_t) - 1)
        last = min(len(spans) - 1, bisect_right(starts, hi_t))
        for i in range(first, last + 1):
            out[i].append((order, seg))
    return out


def _capped(items: dict[str, list[_Item]], max_tokens: int) -> dict[str, list[_Item]]:
    """No more of a source's items, and no longer ones, than could ever fit in max_tokens (a
    token is at least one item and at most ~32 characters): a megabyte-long cue or ten
    thousand screen lines cost what a line's worth of them costs."""
    max_chars = 32 * max(1, max_tokens)
    out = {}
    for src, its in items.items():
        if len(its) > 4 * max_tokens:
            keep = {id(i) for i in sorted(its, key=lambda i: (-i.weight, i.order))[:4 * max_tokens]}
            its = [i for i in its if id(i) in keep]
        out[src] = [i if len(i.text) <= max_chars else _Item(_cut_chars(i.text, max_chars), i.weight, i.order)
                    for i in its]
    return out


def _cut_chars(text: str, n: int) -> str:
    head = text[:n + 1]
    return head.rsplit(" ", 1)[0] if " " in head else text[:n]


def _collapse_fields(items: list[_Item]) -> list[_Item]:
    """Of each group of items equal up to their digits, only the first and last (by first
    sighting); the others are the same field at intermediate values."""
    groups: dict[str, list[_Item]] = {}
    for it in items:
        groups.setdefault(re.sub(r"\d", "#", it.text), []).append(it)
    keep = {id(g[0]) for g in groups.values()} | {id(g[-1]) for g in groups.values()}
    return [it for it in items if id(it) in keep]


def _truncate_words(text: str, budget: int, count_tokens: Callable[[str], int]) -> str:
    """The longest word prefix of `text` with count_tokens <= budget ("" if none)."""
    words = text.split()
    lo, hi = 0, len(words)  # binary search: tokenizers are monotone enough on prefixes
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(" ".join(words[:mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def _fit_source(items: list[_Item], source: str, budget: int, count_tokens: Callable[[str], int]) -> str:
    """The source's text within `budget` tokens: whole items by weight (then first seen),
    the first that does not fit cut on a word boundary, shown in first-seen order."""
    join = _JOIN[source]
    full = join.join(i.text for i in items)
    if budget <= 0:
        return ""
    if count_tokens(full) <= budget:
        return full
    kept: list[tuple[_Item, str]] = []
    for item in sorted(items, key=lambda i: (-i.weight, i.order)):
        trial = kept + [(item, item.text)]
        if count_tokens(join.join(t for _, t in sorted(trial, key=lambda p: p[0].order))) <= budget:
            kept = trial
            continue
        used = count_tokens(join.join(t for _, t in kept) + join) if kept else 0
        cut = _truncate_words(item.text, budget - used, count_tokens)
        if cut:
            kept.append((item, cut))
        break
    text = join.join(t for _, t in sorted(kept, key=lambda p: p[0].order))
    while text and count_tokens(text) > budget:  # the joiner/ordering cost a token or two
        text = text.rsplit(None, 1)[0] if " " in text else ""
    return text


def _shares(needs: dict[str, int], total: int) -> dict[str, int]:
    """Max-min fair split of `total` tokens: sources needing less than an equal share keep
    their need; the rest is split equally among the others."""
    shares, left = {}, dict(needs)
    remaining = total
    while left:
        equal = remaining // len(left)
        small = {s: n for s, n in left.items() if n <= equal}
        if not small:
            # The remainder of the integer split goes to the first sources (SOURCES order).
            extra = remaining - equal * len(left)
            for k, s in enumerate(sorted(left, key=SOURCES.index)):
                shares[s] = equal + (1 if k < extra else 0)
            break
        for s, n in small.items():
            shares[s] = n
            remaining -= n
            del left[s]
    return shares


def chunk_line(items: dict[str, list[_Item]], max_tokens: int, count_tokens: Callable[[str], int]) -> str:
    """Render one chunk's items as its text line of at most max_tokens tokens."""
    full = {s: _JOIN[s].join(i.text for i in v) for s, v in items.items()}
    line = text_line(full)
    if not line or count_tokens(line) <= max_tokens:
        return line
    # Labels, quotes and separators: what the line costs beyond the sources' own text.
    overhead = max(0, count_tokens(text_line({s: "x" for s in full})) - len(full) * count_tokens("x"))
    needs = {s: count_tokens(t) for s, t in full.items()}
    shares = _shares(needs, max(0, max_tokens - overhead))
    while True:
        parts = {s: _fit_source(items[s], s, shares[s], count_tokens) for s in full}
        line = text_line(parts)
        if line and count_tokens(line) <= max_tokens:
            return line
        # Token counts are not additive across the label boundaries: take one more token
        # from the largest share until the whole line fits.
        biggest = max(shares, key=lambda s: (shares[s], s))
        if shares[biggest] <= 0:
            break
        shares[biggest] -= 1
    # Too small for every source's label: drop the last source (SOURCES order) and retry.
    if len(items) > 1:
        last = max(items, key=SOURCES.index)
        return chunk_line({s: v for s, v in items.items() if s != last}, max_tokens, count_tokens)
    return ""


def chunk_texts(segments: Sequence[TextSegment], spans: Sequence[tuple[float, float]], max_tokens: int,
                count_tokens: Callable[[str], int]) -> list[str]:
    """Each chunk's text line (engine.prefill.text_line), "" when it has no text.

    segments: from any sources, any order; spans: [(t_start, t_end)] seconds per chunk;
    count_tokens: str -> number of tokens (the LLM tokenizer's length)."""
    return [chunk_line(_capped(_chunk_items(cands, float(a), float(b)), max_tokens), max_tokens, count_tokens)
            for cands, (a, b) in zip(_by_chunk(segments, spans), spans)]


def transcript(segments: Sequence[TextSegment], chunk_starts: Sequence[float] | None = None) -> list[dict]:
    """All segments as dicts, sorted by start time (then source, then end): the API's
    transcript view. Times in seconds, rounded to ms. With chunk_starts (each chunk's
    t_start, ascending), each row also names the chunk it starts in."""
    order = sorted(segments, key=lambda s: (s.t_start, SOURCES.index(s.source) if s.source in SOURCES else 9, s.t_end))
    out = []
    for s in order:
        d = s.to_dict()
        d["t_start"], d["t_end"], d["conf"] = round(s.t_start, 3), round(s.t_end, 3), round(s.conf, 3)
        d["words"] = [[w, round(a, 3), round(b, 3)] for w, a, b in s.words]
        if chunk_starts is not None:
            d["chunk"] = max(0, bisect_right(chunk_starts, s.t_start) - 1)
        out.append(d)
    return out


def transcript_view(rec, stored: dict | None) -> dict:
    """The API/CLI view of a stored text channel: channels that ran and the time-ordered
    segments (`transcript`), each with the chunk it starts in."""
    segs = [TextSegment.from_dict(d) for d in (stored or {}).get("segments", [])]
    return {"id": rec.video_id, "channels": (stored or {}).get("channels", {}),
            "segments": transcript(segs, [s.t_start for s in rec.plan])}
