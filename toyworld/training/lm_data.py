"""Training data for the LLM adapter, in caption space: a "video" is a list of FrameLabels
(what the trained tower writes for each sampled frame), chunked like the ingest pipeline,
with the questions of TOYWORLD.md (several wordings each) and short sentence answers.

No pixels here: the tower is trained separately on rendered frames; the adapter learns
to read captions through the real chunk-prefill / compression / assembly path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from videokv.toyworld.captions import COLORS, DIGITS, SHAPES, FrameLabel

WORDINGS = {
    "retrieval": ("What digit was shown on the {color} card?", "Which digit did the {color} card show?",
                  "What number was on the {color} card?", "The {color} card showed which digit?",
                  "What was the digit on the {color} card?"),
    "attribute": ("What color was the {shape}?", "Which color did the {shape} have?",
                  "What was the color of the {shape}?", "The {shape} was which color?"),
    "counting": ("How many times did a {color} {shape} appear?", "How often did a {color} {shape} appear?",
                 "How many times was a {color} {shape} shown?", "Count the appearances of the {color} {shape}."),
    "ordering": ("Which appeared first, the {a} or the {b}?", "Which came first: the {a} or the {b}?",
                 "Did the {a} or the {b} appear first?"),
    "temporal": ("When did the {color} card appear?", "At what time did the {color} card appear?",
                 "When was the {color} card shown?"),
}


@dataclass
class Event:
    label: FrameLabel
    start: int          # first frame
    end: int            # one past the last frame

    @property
    def name(self) -> str:
        lb = self.label
        return f"{lb.color} card" if lb.kind == "card" else f"{lb.color} {lb.shape}"


@dataclass
class CaptionVideo:
    frames: list[FrameLabel]
    events: list[Event]
    chunk_frames: int
    chunk_times: list[float]          # start time of each chunk, seconds

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_times)

    def chunks_of(self, ev: Event) -> set[int]:
        return set(range(ev.start // self.chunk_frames, (ev.end - 1) // self.chunk_frames + 1))


@dataclass
class QA:
    type: str
    question: str
    answer: str
    chunks: set[int] = field(default_factory=set)   # chunks showing what it asks about
    key: str = ""                                   # what a right answer must contain


def random_video(rng: np.random.Generator, n_chunks: int, chunk_frames: int = 16,
                 n_events: int | None = None, clustered: bool | None = None, cluster_min: int = 2,
                 repeat: int = 0) -> CaptionVideo:
    """Events of 1-10 frames, never overlapping; cards of distinct colours; one colour/shape
    pair may repeat (for counting); other shape events have distinct pairs.

    Placement: one event per equal time slot, or (clustered, half the videos when None) a
    run of 2+ short events back to back with 1-3 blank frames between them, so several
    share a chunk (as in a busy scene, or the needle bench's cluster), and the rest at
    random free places. cluster_min: the fewest events in that run (a busy scene: 4+).
    repeat: when > 0, exactly that many events show one colour/shape pair (else 2-5 of them
    in 75% of videos with 2+ shapes)."""
    n = n_chunks * chunk_frames
    k = int(rng.integers(1, min(7, max(2, n // 12)) + 1)) if n_events is None else n_events
    n_cards = int(rng.integers(0, k + 1 - repeat))
    ids = [FrameLabel("card", c, digit=str(rng.choice(DIGITS))) for c in rng.permutation(COLORS)[:n_cards]]
    n_shapes = k - len(ids)
    used: set[tuple[str, str]] = set()
    if repeat or (n_shapes >= 2 and rng.random() < 0.75):
        rep = repeat or int(rng.integers(2, min(5, n_shapes) + 1))
        pair = (str(rng.choice(COLORS)), str(rng.choice(SHAPES)))
        used.add(pair)
        ids += [FrameLabel("shape", pair[0], shape=pair[1])] * rep
    while len(ids) < k:
        pair = (str(rng.choice(COLORS)), str(rng.choice(SHAPES)))
        if pair not in used:
            used.add(pair)
            ids.append(FrameLabel("shape", pair[0], shape=pair[1]))
    ids = [ids[i] for i in rng.permutation(len(ids))]
    if clustered is None:
        clustered = k >= 2 and rng.random() < 0.5
    spans = _clustered_spans(rng, n, k, cluster_min) if clustered and k >= 2 else None
    if spans is None:   # one event per equal time slot, so they never overlap
        spans = []
        for j in range(k):
            a, b = j * n // k, (j + 1) * n // k
            length = int(min(rng.integers(1, 11), max(1, b - a - 1)))
            s = int(rng.integers(a, max(a + 1, b - length)))
            spans.append((s, s + length))
    frames = [FrameLabel()] * n
    events = []
    for lb, (s, e) in zip(ids, spans):
        events.append(Event(lb, s, e))
        frames[s:e] = [lb] * (e - s)
    events.sort(key=lambda e: e.start)
    seconds = float(rng.choice([16.0, 16.0, 16.0, 8.0, 32.0, 4.0]))
    t0 = float(rng.choice([0.0, 0.0, round(float(rng.uniform(0, 600)), 0)]))
    return CaptionVideo(frames, events, chunk_frames, [t0 + i * seconds for i in range(n_chunks)])


def busy_video(rng: np.random.Generator, n_chunks: int, chunk_frames: int = 16) -> CaptionVideo:
    """A busy scene: 5-7 events, 4 or more of them back to back (so 3-4 distinct objects
    share a chunk), at least 4 chunks long. Attribute and ordering questions then have to
    pick their object out of its neighbours, which sparse one-event-per-slot videos never ask."""
    return random_video(rng, max(4, n_chunks), chunk_frames, n_events=int(rng.integers(5, 8)),
                        clustered=True, cluster_min=4)


def counting_video(rng: np.random.Generator, n_chunks: int, chunk_frames: int = 16) -> CaptionVideo:
    """A video asked how often a pair appeared, with the answer 2 or 3 (as in the needle
    bench) and its occurrences one per time slot, so usually in different chunks: the
    model has to add up what several chunks show. Random videos alone ask this with the
    answer 1 about half the time (every once-seen pair is a counting question too), and a
    model trained on them learns to say "1 time"."""
    rep = int(rng.integers(2, 4))
    n = max(2, n_chunks)
    most = max(rep, min(7, n * chunk_frames // 12))      # random_video's event budget, at least rep
    return random_video(rng, n, chunk_frames, n_events=int(rng.integers(rep, most + 1)), clustered=False, repeat=rep)


def _clustered_spans(rng: np.random.Generator, n: int, k: int, m_min: int = 2) -> list[tuple[int, int]] | None:
    """k non-overlapping (start, end) frame spans: the first m (m_min..k) back to back with
    1-3 frame gaps, the others anywhere free (one blank frame apart). None if they do not fit."""
    m = int(rng.integers(min(max(2, m_min), k), k + 1))
    lengths = [int(x) for x in rng.integers(1, 6, size=m)]
    gaps = [int(x) for x in rng.integers(1, 4, size=m - 1)]
    span = sum(lengths) + sum(gaps)
    if span > n:
        return None
    pos = int(rng.integers(0, n - span + 1))
    spans = []
    for j, length in enumerate(lengths):
        spans.append((pos, pos + length))
        pos += length + (gaps[j] if j < m - 1 else 0)
    busy = np.zeros(n + 2, bool)
    for s, e in spans:
        busy[s:e + 2] = True
    for _ in range(k - m):
        length = int(rng.integers(1, 11))
        for _try in range(50):
            s = int(rng.integers(0, max(1, n - length + 1)))
            e = min(n, s + length)
            if not busy[max(0, s - 1):e + 1].any():
                break
        else:
            return None
        spans.append((s, e))
        busy[s:e + 2] = True
    return spans      # ids are already in random order, so which ones cluster is random


def questions(video: CaptionVideo, rng: np.random.Generator, list_counts: bool = False) -> list[QA]:
    """Every question type the events allow, one random wording each. list_counts: a
    counting answer first lists when each appearance began, then counts the list ("The red
    circle appeared at 128.0s and 160.0s, 2 times."): a small LM counts a list it has just
    written more reliably than attention spread over several chunks."""
    evs = sorted(video.events, key=lambda e: e.start)
    out: list[QA] = []

    def ask(kind: str, answer: str, chunks: set[int], key: str, **fmt) -> None:
        out.append(QA(kind, str(rng.choice(WORDINGS[kind])).format(**fmt), answer, chunks, key))

    shapes: dict[str, list[Event]] = {}
    pairs: dict[tuple[str, str], list[Event]] = {}
    for e in evs:
        if e.label.kind == "card":
            ask("retrieval", f"The {e.label.color} card showed {e.label.digit}.", video.chunks_of(e), e.label.digit,
                color=e.label.color)
            t = video.chunk_times[e.start // video.chunk_frames]
            ask("temporal", f"The {e.label.color} card appeared at {t:.1f}s.", video.chunks_of(e), f"{t:.1f}s",
                color=e.label.color)
        else:
            shapes.setdefault(e.label.shape, []).append(e)
            pairs.setdefault((e.label.color, e.label.shape), []).append(e)
    for shape, group in shapes.items():
        if len({e.label.color for e in group}) == 1:
            ask("attribute", f"The {shape} was {group[0].label.color}.",
                set().union(*(video.chunks_of(e) for e in group)), group[0].label.color, shape=shape)
    for (color, shape), group in pairs.items():
        n = len(group)
        times = ""
        if list_counts:
            ts = [f"{video.chunk_times[e.start // video.chunk_frames]:.1f}s" for e in group]
            times = " at " + (ts[0] if n == 1 else ", ".join(ts[:-1]) + " and " + ts[-1]) + ","
        ask("counting", f"The {color} {shape} appeared{times} {n} time{'s' if n > 1 else ''}.",
            set().union(*(video.chunks_of(e) for e in group)), str(n), color=color, shape=shape)
    once = [g[0] for g in pairs.values() if len(g) == 1] + [e for e in evs if e.label.kind == "card"]
    if len(once) >= 2:
        a, b = (once[i] for i in rng.choice(len(once), 2, replace=False))
        first = a if a.start < b.start else b
        ask("ordering", f"The {first.name} appeared first.", video.chunks_of(a) | video.chunks_of(b),
            first.name, a=a.name, b=b.name)
    return out


def sample_questions(qas: list[QA], n: int, rng: np.random.Generator, counting_first: bool = False) -> list[QA]:
    """Up to n questions, one type at a time in random order (so rare types are not drowned
    by per-event ones); a counting question asks about a repeated pair when there is one
    (otherwise the answer would nearly always be "1 time"). counting_first: the first
    question is about the repeated pair, when there is one."""
    by_type: dict[str, list[QA]] = {}
    for i in rng.permutation(len(qas)):
        by_type.setdefault(qas[i].type, []).append(qas[i])
    counting = by_type.get("counting", [])
    repeated = [q for q in counting if q.key != "1"]
    if repeated and (counting_first or rng.random() < 0.8):
        by_type["counting"] = repeated + [q for q in counting if q.key == "1"]
    types = [t for t in rng.permutation(sorted(by_type))]
    if counting_first and repeated:
        types = ["counting"] + [t for t in types if t != "counting"]
    out: list[QA] = []
    while len(out) < n and any(by_type.values()):
        for t in types:
            if by_type[t] and len(out) < n:
                out.append(by_type[t].pop(0))
    return out
