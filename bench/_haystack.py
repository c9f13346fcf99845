"""The needle bench's haystacks (`videokv bench needle`, also the counting, moments and quant
benches): toy-world videos with one needle cluster at a chosen depth, rendered once and reused
by spec, with one question per type and their ground truth.

What "needle at depth d" means. A haystack of T seconds holds one needle cluster of five
events, each --needle-seconds long (default 3 s) with --gap-seconds (1 s) between them, in
this order:

  ordering A | attribute shape | card | counting #1 | ordering B

centred so that the card's midpoint is at d*T (shifted inwards when the cluster would not
fit, e.g. depth 0.1 of a 64 s haystack; the JSON records every needle's actual depth):

  retrieval  "What digit was shown on the {color} card?"  the card is the needle; at d.
  temporal   "When did the {color} card appear?"          the same card; at d.
  attribute  "What color was the {shape}?"  the only event of that shape; one slot before
             the card (d*T - needle - gap seconds).
  ordering   "Which appeared first, the A or the B?"  two single objects flanking the card
             two slots either side; the pair straddles d (their midpoint is at d*T).
  counting   "How many times did a {color} {shape} appear?" (answer 2 or 3): occurrence #1
             sits in the cluster, one slot after the card; the other one or two are spread
             at random over the rest of the haystack. Depth marks only the first of them:
             counting is an aggregate over the whole video by nature.

Identities are drawn so every question has exactly one answer (one card; the attribute
shape appears once; ordering objects appear once, with shapes other than the attribute's
and the counting pair's); distractors (0-4 small moving shapes) are drawn as in every toy
world and never share an event's (colour, shape) nor the shape of a single event. Questions
use ingest.scenario's templates and are graded by ingest.grading.is_correct.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from ._common import SIZE

TYPES = ("retrieval", "attribute", "counting", "ordering", "temporal")
LAYOUT_VERSION = 1


def haystack_seed(seed: int, length: int, depth: float, repeat: int) -> int:
    return int(np.random.SeedSequence([seed, length, int(round(depth * 1000)), repeat]).generate_state(1)[0])


def needle_layout(rng: np.random.Generator, n_frames: int, fps: float, depth: float,
                  needle_s: float = 3.0, gap_s: float = 1.0):
    """(needles, roles): the five-slot cluster with the card's midpoint at depth * T plus the
    other counting occurrences elsewhere (see the module docstring). roles maps
    card/attribute/ordering/counting/cluster to needle indices."""
    from videokv.toyworld import render as tw
    from videokv.toyworld.scenario import Needle

    colors, shapes = list(tw.COLORS), list(tw.SHAPES)
    ns, gs = max(1, int(round(needle_s * fps))), max(1, int(round(gap_s * fps)))
    margin = max(1, int(round(0.5 * fps)))
    span = 5 * ns + 4 * gs
    if n_frames - 2 * margin < span + 2 * (ns + gs):
        raise ValueError(f"a haystack of {n_frames / fps:g} s is too short for the needle cluster "
                         f"({span / fps:g} s) and the counting repeats")
    centre = depth * n_frames                                   # in frames
    start = int(round(centre - 2 * (ns + gs) - ns / 2))
    start = min(max(start, margin), n_frames - margin - span)
    slots = [(start + j * (ns + gs), start + j * (ns + gs) + ns) for j in range(5)]

    card = ("card", str(rng.choice(colors)), None, str(rng.integers(0, 10)))
    s_attr = str(rng.choice(shapes))
    attr = ("shape", str(rng.choice(colors)), s_attr, None)
    s_count = str(rng.choice([s for s in shapes if s != s_attr]))
    count_id = ("shape", str(rng.choice(colors)), s_count, None)
    s_a, s_b = (str(s) for s in rng.choice([s for s in shapes if s not in (s_attr, s_count)], 2, replace=False))
    ord_a = ("shape", str(rng.choice(colors)), s_a, None)
    ord_b = ("shape", str(rng.choice(colors)), s_b, None)
    n_count = int(rng.integers(2, 4))

    ids = [ord_a, attr, card, count_id, ord_b]
    spans = list(slots)
    # The other counting occurrences: random free places outside everything placed so far.
    for _ in range(n_count - 1):
        free = [s for s in range(margin, n_frames - margin - ns + 1)
                if all(s + ns + gs <= a or b + gs <= s for a, b in spans)]
        if not free:
            raise ValueError(f"no room for {n_count} counting repeats in {n_frames / fps:g} s")
        s = int(rng.choice(free))
        ids.append(count_id)
        spans.append((s, s + ns))
    needles = [Needle(kind=k, color=c, shape=sh, digit=d, t_start=a / fps, t_end=b / fps)
               for (k, c, sh, d), (a, b) in zip(ids, spans)]
    roles = {"ordering": [0, 4], "attribute": 1, "card": 2, "counting": [3] + list(range(5, len(needles))),
             "cluster": [0, 1, 2, 3, 4]}
    return needles, roles


def needle_questions(world, roles: dict, rng: np.random.Generator, chunk_seconds: float,
                     types=TYPES) -> list[dict]:
    """One question per type (TOYWORLD templates from ingest.scenario) about the needles;
    each carries needle_depth: where its depth-defining needle(s) actually sit (0-1)."""
    from videokv.toyworld import scenario

    ev = world.events
    T = world.duration

    def depth(*events):
        return round(statistics.fmean((e.start_frame + e.end_frame) / 2 / world.fps for e in events) / T, 4)

    card, attr = ev[roles["card"]], ev[roles["attribute"]]
    a, b = (ev[i] for i in roles["ordering"])
    if rng.random() < 0.5:
        a, b = b, a
    group = sorted((ev[i] for i in roles["counting"]), key=lambda e: e.start_frame)
    made = {
        "retrieval": (scenario.retrieval_question(card), depth(card)),
        "attribute": (scenario.attribute_question(attr), depth(attr)),
        "counting": (scenario.counting_question(group), depth(ev[roles["counting"][0]])),
        "ordering": (scenario.ordering_question(a, b), depth(a, b)),
        "temporal": (scenario.temporal_question(card, chunk_seconds), depth(card)),
    }
    qs = []
    for t in types:
        q, d = made[t]
        qs.append({**q, "id": f"q{len(qs)}", "needle_depth": d})
    return qs


def make_haystack(videos: Path, length: int, depth: float, repeat: int, seed: int, fps: float,
                  needle_s: float, gap_s: float, chunk_seconds: float) -> tuple[Path, dict, bool, float]:
    """(video path, ground truth with one question per type, reused, render seconds). Reuses
    a video whose ground truth records the same spec (same bytes -> the pipeline deduplicates
    the ingest); the temporal tolerance is set to chunk_seconds either way."""
    from videokv.toyworld import scenario
    from videokv.toyworld.synth import GENERATOR_VERSION, encode_video

    name = f"needle-n{length}-d{depth:g}-r{repeat}-s{seed}"
    path, truth_path = videos / f"{name}.mp4", videos / f"{name}.json"
    hseed = haystack_seed(seed, length, depth, repeat)
    n_frames = length                     # rendered at the sampling rate: every frame is sampled
    spec = {"layout": LAYOUT_VERSION, "generator": GENERATOR_VERSION, "seed": seed, "haystack_seed": hseed,
            "length": length, "depth": depth, "repeat": repeat, "fps": fps, "n_frames": n_frames,
            "size": list(SIZE), "needle_seconds": needle_s, "gap_seconds": gap_s}

    def tolerance(truth):
        for q in truth["questions"]:
            if q["type"] == "temporal":
                q["tolerance_s"] = chunk_seconds
        return truth

    if path.exists() and truth_path.exists():
        try:
            truth = json.loads(truth_path.read_text())
            if truth.get("spec") == spec:
                return path, tolerance(truth), True, 0.0
        except (OSError, ValueError):
            pass
    t = time.perf_counter()
    rng = np.random.default_rng([hseed, 2])
    needles, roles = needle_layout(rng, n_frames, fps, depth, needle_s, gap_s)
    world = scenario.build_needle_world(hseed, n_frames, fps, SIZE, needles)
    questions = needle_questions(world, roles, rng, chunk_seconds)
    videos.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
    codec = encode_video(tmp, (world.render(i) for i in range(n_frames)), fps, SIZE)
    os.replace(tmp, path)
    truth = {"spec": spec, "video": {"path": path.name, "codec": codec, "width": SIZE[0], "height": SIZE[1],
                                     "fps": fps, "n_frames": n_frames, "duration": n_frames / fps},
             "roles": roles, "needles": [n.to_dict() for n in needles],
             "events": [{**e.to_dict(), "depth": round((e.start_frame + e.end_frame) / 2 / n_frames, 4)}
                        for e in world.events],
             "distractors": [d.obj.name for d in world.distractors], "questions": questions}
    truth_path.write_text(json.dumps(truth, indent=1) + "\n")
    return path, tolerance(truth), False, time.perf_counter() - t
