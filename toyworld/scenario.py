"""A toy-world video as data: background, distractors, timed events, and questions.

`build_world(seed, n_frames, n_events, fps, size)` is a pure function of its arguments
(one numpy Generator seeded with `seed`), so a ground-truth JSON that records them is
enough to re-render any frame exactly (`World.render(i)`). `build_needle_world(seed,
n_frames, fps, size, needles)` is the same with the events given (identity and time span),
for benchmarks that control where the needles sit (bench/_haystack.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image

from . import render as tw

MIN_EVENT_S = 1.0
MAX_EVENT_S = 10.0
# Events larger than this fraction of their bbox in their own colour (at the midpoint
# frame, after compositing) are what the ground truth promises; see _place_event.
MIN_COLOR_FRACTION = 0.25


def _reflect(x: float, lo: float, hi: float) -> float:
    """Bounce x into [lo, hi] (a triangle wave), so distractors drift and turn back."""
    if hi <= lo:
        return (lo + hi) / 2
    span = hi - lo
    y = (x - lo) % (2 * span)
    return lo + (y if y <= span else 2 * span - y)


@dataclass
class Distractor:
    obj: tw.ToyObject
    start: tuple[float, float]
    velocity: tuple[float, float]  # pixels per second
    bounds: tuple[float, float, float, float]  # allowed centre range x0, y0, x1, y1

    def center(self, t: float) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bounds
        return (_reflect(self.start[0] + self.velocity[0] * t, x0, x1),
                _reflect(self.start[1] + self.velocity[1] * t, y0, y1))


@dataclass
class Event:
    index: int
    obj: tw.ToyObject
    start_frame: int
    end_frame: int  # exclusive
    p0: tuple[float, float]  # centre at start_frame
    p1: tuple[float, float]  # centre at end_frame - 1 (equal to p0 when still)
    fps: float
    bbox_mid: tuple[int, int, int, int] = (0, 0, 0, 0)
    color_fraction: float = 0.0

    @property
    def t_start(self) -> float:
        return self.start_frame / self.fps

    @property
    def t_end(self) -> float:
        return self.end_frame / self.fps

    @property
    def mid_frame(self) -> int:
        return (self.start_frame + self.end_frame - 1) // 2

    def active(self, i: int) -> bool:
        return self.start_frame <= i < self.end_frame

    def center(self, i: int) -> tuple[float, float]:
        n = max(1, self.end_frame - 1 - self.start_frame)
        a = min(max((i - self.start_frame) / n, 0.0), 1.0)
        return (self.p0[0] + a * (self.p1[0] - self.p0[0]), self.p0[1] + a * (self.p1[1] - self.p0[1]))

    def to_dict(self) -> dict:
        o = self.obj
        return {
            "id": self.index, "kind": o.kind, "color": o.color, "rgb": list(tw.COLORS[o.color]),
            "shape": o.shape, "digit": o.digit, "name": o.name,
            "t_start": self.t_start, "t_end": self.t_end, "t_mid": self.mid_frame / self.fps,
            "start_frame": self.start_frame, "end_frame": self.end_frame, "mid_frame": self.mid_frame,
            "bbox_mid": list(self.bbox_mid), "color_fraction": round(self.color_fraction, 4),
            "moving": self.p0 != self.p1, "render": o.to_dict(),
        }


@dataclass
class World:
    seed: int
    width: int
    height: int
    fps: float
    n_frames: int
    background: tw.Background
    blur: float
    noise: float
    events: list[Event] = field(default_factory=list)
    distractors: list[Distractor] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.n_frames / self.fps

    def render(self, i: int, with_labels: bool = False):
        """Frame i (time i/fps): uint8 [H, W, 3]; with_labels also returns one dict per
        visible object (role, name, bbox)."""
        t = i / self.fps
        canvas = Image.fromarray(self.background.render(self.width, self.height, t).clip(0, 255).astype(np.uint8))
        labels = []
        for d in self.distractors:  # events are drawn on top of distractors
            bbox = tw.paste(canvas, d.obj, d.center(t))
            labels.append({"role": "distractor", "name": d.obj.name, "bbox": list(bbox)})
        for e in self.events:
            if e.active(i):
                bbox = tw.paste(canvas, e.obj, e.center(i))
                labels.append({"role": "event", "id": e.index, "name": e.obj.name, "bbox": list(bbox)})
        # Noise is seeded per frame so any frame can be rendered alone, identically.
        frame = tw.finish(canvas, self.blur, self.noise, np.random.default_rng([self.seed, i]))
        return (frame, labels) if with_labels else frame


def _identities(rng: np.random.Generator, k: int) -> list[tuple[str, str, str | None, str | None]]:
    """(kind, color, shape, digit) for k events: cards of distinct colours (so "the red
    card" is unambiguous), one (colour, shape) pair repeated 2-5 times when there are
    enough shape events (for counting), and other shape events of distinct pairs."""
    colors = list(tw.COLORS)
    n_cards = int(rng.integers(0, 2)) if k == 1 else min(8, max(1, int(round(k * rng.uniform(0.3, 0.5)))))
    n_shapes = k - n_cards
    ids = [("card", str(c), None, str(rng.integers(0, 10))) for c in rng.permutation(colors)[:n_cards]]
    repeat = int(rng.integers(2, min(5, n_shapes - 1) + 1)) if n_shapes >= 3 else min(1, n_shapes)
    rep_pair = (str(rng.choice(colors)), str(rng.choice(tw.SHAPES)))
    pairs = [rep_pair] * repeat
    other_shapes = [str(s) for s in rng.permutation(tw.SHAPES) if s != rep_pair[1]]
    used = {rep_pair}
    for j in range(n_shapes - repeat):
        shape = other_shapes[j % len(other_shapes)]
        color = str(rng.choice([c for c in colors if (c, shape) not in used]))
        used.add((color, shape))
        pairs.append((color, shape))
    ids += [("shape", c, s, None) for c, s in pairs]
    return [ids[i] for i in rng.permutation(len(ids))]


def _timings(rng: np.random.Generator, k: int, n_frames: int, fps: float) -> list[tuple[int, int]]:
    """k non-overlapping [start, end) frame spans of 1-10 s, one per equal time slot,
    with a margin of >= 1 frame (~0.25 s) at both ends of every slot."""
    one_s = max(1, int(round(fps)))
    margin = max(1, int(round(0.25 * fps)))
    spans = []
    for j in range(k):
        sa, sb = int(np.ceil(j * n_frames / k)), int(np.ceil((j + 1) * n_frames / k))
        room = sb - sa - 2 * margin
        if room < one_s:
            raise ValueError(f"{k} events do not fit in {n_frames / fps:.1f} s: each needs at least 1.5 s")
        length = int(round(rng.uniform(MIN_EVENT_S, MAX_EVENT_S) * fps))
        length = min(max(length, one_s), int(MAX_EVENT_S * fps), room)
        start = sa + margin + int(rng.integers(0, room - length + 1))
        spans.append((start, start + length))
    return spans


def _fit_center(rng, extent, size) -> tuple[float, float]:
    (w, h), (W, H) = extent, size
    return (float(rng.uniform(w / 2, W - w / 2)) if w < W else W / 2,
            float(rng.uniform(h / 2, H - h / 2)) if h < H else H / 2)


def _dominance(frame: np.ndarray, bbox, color: str) -> tuple[float, bool]:
    """(fraction of bbox pixels of `color`, whether it beats every other vocabulary colour)."""
    x0, y0, x1, y1 = bbox
    classes = tw.classify_pixels(frame[y0:y1, x0:x1])
    counts = np.bincount(classes[classes >= 0].ravel(), minlength=len(tw.COLORS))
    mine = list(tw.COLORS).index(color)
    frac = counts[mine] / max(1, classes.size)
    return float(frac), bool(counts[mine] == counts.max() and counts[mine] > 0)


def _place_event(rng, world: World, event: Event, identity) -> None:
    """Choose size/rendering/position until, at the midpoint frame, the event's colour
    covers >= MIN_COLOR_FRACTION of its bbox and beats every other colour there (so
    the ground truth's bbox is checkable in pixels). The last try is plain: filled,
    upright, unoccluded."""
    kind, color, shape, digit = identity
    W, H = world.width, world.height
    for attempt in range(12):
        obj = tw.random_object(rng, kind, color, H, tw.EVENT_HEIGHT, shape=shape, digit=digit)
        if attempt == 11:
            obj = tw.ToyObject(**{**obj.to_dict(), "filled": True, "rotation": 0.0, "occlusion": 0.0})
        extent = tw.sprite_extent(obj)
        p0 = _fit_center(rng, extent, (W, H))
        p1 = p0
        if rng.random() < 0.4:  # some events drift slowly while visible
            dur = (event.end_frame - event.start_frame) / world.fps
            ang, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.01, 0.05) * H
            p1 = (float(np.clip(p0[0] + np.cos(ang) * speed * dur, extent[0] / 2, max(extent[0] / 2, W - extent[0] / 2))),
                  float(np.clip(p0[1] + np.sin(ang) * speed * dur, extent[1] / 2, max(extent[1] / 2, H - extent[1] / 2))))
        event.obj, event.p0, event.p1 = obj, p0, p1
        frame, labels = world.render(event.mid_frame, with_labels=True)
        bbox = next(lab["bbox"] for lab in labels if lab.get("id") == event.index)
        frac, wins = _dominance(frame, bbox, color)
        if frac >= MIN_COLOR_FRACTION and wins:
            break
    event.bbox_mid, event.color_fraction = tuple(bbox), frac


def build_world(seed: int, n_frames: int, n_events: int, fps: float, size: tuple[int, int]) -> World:
    rng = np.random.default_rng(seed)
    W, H = size
    world = World(seed, W, H, fps, n_frames, tw.Background.random(rng),
                  blur=float(np.round(rng.uniform(0.0, 0.8), 2)), noise=float(np.round(rng.uniform(0.0, 4.0), 2)))
    identities = _identities(rng, n_events)
    spans = _timings(rng, n_events, n_frames, fps)
    _populate(rng, world, identities, spans)
    return world


def _populate(rng: np.random.Generator, world: World, identities, spans) -> None:
    """Add the events (identities at spans) and 0-4 distractors to `world`, then render-check
    each event's placement."""
    W, H, fps = world.width, world.height, world.fps
    placeholder = tw.ToyObject(kind="shape", color="red", shape="circle")
    world.events = [Event(i, placeholder, a, b, (0.0, 0.0), (0.0, 0.0), fps) for i, (a, b) in enumerate(spans)]

    # Distractors never share a (colour, shape) with any event, nor a shape that an
    # attribute question asks about ("What color was the star?" must have one answer).
    event_pairs = {(c, s) for k, c, s, _ in identities if k == "shape"}
    attribute_shapes = set(attribute_shapes_of(identities))
    allowed = [(c, s) for c in tw.COLORS for s in tw.SHAPES if (c, s) not in event_pairs and s not in attribute_shapes]
    for _ in range(int(rng.integers(0, 5))):
        color, shape = allowed[int(rng.integers(len(allowed)))]
        obj = tw.random_object(rng, "shape", color, H, tw.DISTRACTOR_HEIGHT, shape=shape, occlusion_p=0.2)
        w, h = tw.sprite_extent(obj)
        ang, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.01, 0.05) * H
        world.distractors.append(Distractor(
            obj, _fit_center(rng, (w, h), (W, H)), (float(np.cos(ang) * speed), float(np.sin(ang) * speed)),
            (w / 2, h / 2, max(w / 2, W - w / 2), max(h / 2, H - h / 2))))
    for event, identity in zip(world.events, identities):
        _place_event(rng, world, event, identity)


@dataclass(frozen=True)
class Needle:
    """An event to place at a given time: a `{color} card showing {digit}` (kind "card")
    or a `{color} {shape}` (kind "shape"), visible for [t_start, t_end) seconds."""

    kind: str
    color: str
    t_start: float
    t_end: float
    shape: str | None = None
    digit: str | None = None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def build_needle_world(seed: int, n_frames: int, fps: float, size: tuple[int, int],
                       needles: Sequence[Needle]) -> World:
    """A world whose events are exactly `needles`, in the given order (event i = needles[i]),
    each shown from frame round(t_start * fps) to round(t_end * fps) (exclusive); background,
    blur, noise, distractors and each event's rendering are drawn from `seed` as in
    build_world. Needles must be 1-10 s long, inside the video and not overlap in time (two
    large objects at once could hide each other); distractors avoid every needle's (colour,
    shape) and every shape that appears once among the needles (attribute questions)."""
    rng = np.random.default_rng(seed)
    W, H = size
    world = World(seed, W, H, fps, n_frames, tw.Background.random(rng),
                  blur=float(np.round(rng.uniform(0.0, 0.8), 2)), noise=float(np.round(rng.uniform(0.0, 4.0), 2)))
    identities, spans = [], []
    for n in needles:
        if n.kind not in ("card", "shape") or n.color not in tw.COLORS:
            raise ValueError(f"bad needle {n}: kind must be card/shape and color one of {', '.join(tw.COLORS)}")
        if (n.kind == "card") != (n.digit in tw.DIGITS) or (n.kind == "shape") != (n.shape in tw.SHAPES):
            raise ValueError(f"bad needle {n}: a card needs a digit, a shape one of {', '.join(tw.SHAPES)}")
        a, b = int(round(n.t_start * fps)), int(round(n.t_end * fps))
        if not (0 <= a < b <= n_frames):
            raise ValueError(f"needle {n} is outside the video (0-{n_frames / fps:g} s) or empty at {fps:g} fps")
        if not MIN_EVENT_S - 1e-6 <= (b - a) / fps <= MAX_EVENT_S + 1e-6:
            raise ValueError(f"needle {n} lasts {(b - a) / fps:g} s; events last {MIN_EVENT_S:g}-{MAX_EVENT_S:g} s")
        identities.append((n.kind, n.color, n.shape, n.digit))
        spans.append((a, b))
    order = sorted(range(len(spans)), key=lambda i: spans[i])
    for i, j in zip(order, order[1:]):
        if spans[j][0] < spans[i][1]:
            raise ValueError(f"needles {needles[i]} and {needles[j]} overlap in time")
    _populate(rng, world, identities, spans)
    return world


def attribute_shapes_of(identities) -> list[str]:
    shapes = [s for k, _, s, _ in identities if k == "shape"]
    return sorted(s for s in set(shapes) if shapes.count(s) == 1)


@lru_cache(maxsize=8)
def cached_world(seed: int, n_frames: int, n_events: int, fps: float, size: tuple[int, int]) -> World:
    return build_world(seed, n_frames, n_events, fps, size)


def _mmss(t: float) -> str:
    return f"{int(t // 60):02d}:{int(t % 60):02d}"


# One function per TOYWORLD question template (make_questions and the needle bench use them).

def retrieval_question(card: Event) -> dict:
    return {"type": "retrieval", "question": f"What digit was shown on the {card.obj.color} card?",
            "answer": card.obj.digit, "event_ids": [card.index]}


def attribute_question(e: Event) -> dict:
    return {"type": "attribute", "question": f"What color was the {e.obj.shape}?",
            "answer": e.obj.color, "event_ids": [e.index]}


def counting_question(group: list[Event]) -> dict:
    color, shape = group[0].obj.color, group[0].obj.shape
    return {"type": "counting", "question": f"How many times did a {color} {shape} appear?",
            "answer": str(len(group)), "event_ids": [x.index for x in group]}


def ordering_question(a: Event, b: Event) -> dict:
    first = a if a.start_frame < b.start_frame else b
    return {"type": "ordering", "question": f"Which appeared first, the {a.obj.name} or the {b.obj.name}?",
            "answer": f"the {first.obj.name}", "event_ids": [a.index, b.index]}


def temporal_question(card: Event, chunk_seconds: float) -> dict:
    return {"type": "temporal", "question": f"When did the {card.obj.color} card appear?",
            "answer": _mmss(card.t_start), "answer_seconds": card.t_start,
            "answer_span": [card.t_start, card.t_end], "tolerance_s": chunk_seconds, "event_ids": [card.index]}


def make_questions(world: World, rng: np.random.Generator, chunk_seconds: float) -> list[dict]:
    """Question/answer pairs for every TOYWORLD template the events allow."""
    events = sorted(world.events, key=lambda e: e.start_frame)
    cards = [e for e in events if e.obj.kind == "card"]
    shapes = [e for e in events if e.obj.kind == "shape"]
    pair_count: dict[tuple[str, str], list[Event]] = {}
    for e in shapes:
        pair_count.setdefault((e.obj.color, e.obj.shape), []).append(e)
    qs: list[dict] = [retrieval_question(e) for e in cards]
    for shape in attribute_shapes_of([(e.obj.kind, e.obj.color, e.obj.shape, None) for e in events]):
        qs.append(attribute_question(next(x for x in shapes if x.obj.shape == shape)))
    qs += [counting_question(group) for group in pair_count.values()]
    # Ordering between objects that appear exactly once (then "first" is unambiguous).
    once = [g[0] for g in pair_count.values() if len(g) == 1]
    if len(once) < 2:
        once = sorted(once + cards, key=lambda e: e.start_frame)
    order = [once[i] for i in rng.permutation(len(once))]
    qs += [ordering_question(a, b) for a, b in list(zip(order[::2], order[1::2]))[:5]]
    qs += [temporal_question(e, chunk_seconds) for e in cards]
    for i, q in enumerate(qs):
        q["id"] = f"q{i}"
    return qs
