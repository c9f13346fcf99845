"""Toy-world haystacks of hours for `videokv bench long`: one video per (length, repeat) holding
a needle cluster at each depth, so every depth and question type is asked of one ingest.

A cluster is the needle bench's five slots (bench/_haystack.py says what each question asks):

  ordering A | attribute shape (or a second card) | card | counting #1 | ordering B

with the other one or two counting occurrences at random free places of the video. All needles
of a video must keep every question single-answered: cards of distinct colours; an attribute
question's shape appears once in the whole video, which the toy world's five shapes allow for
three clusters at most, so the other clusters show a second card there (one more retrieval
question); ordering objects and counting identities are distinct (colour, shape) pairs of the
two remaining shapes. Which clusters ask about an attribute rotates with the repeat.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from ._common import SIZE, render_world, reusable_truth

LAYOUT_VERSION = 1
ATTRIBUTE_CLUSTERS = 3


def _free_start(rng, n_frames: int, length: int, gap: int, margin: int, taken: list[tuple[int, int]]) -> int:
    """A random start of a `length`-frame needle clear of everything in `taken` by `gap`."""
    for _ in range(10_000):
        s = int(rng.integers(margin, n_frames - margin - length + 1))
        if all(s + length + gap <= a or b + gap <= s for a, b in taken):
            return s
    raise ValueError(f"no free room for a {length}-frame needle in {n_frames} frames")


def layout(rng: np.random.Generator, n_frames: int, fps: float, depths: list[float], repeat: int,
           needle_s: float = 3.0, gap_s: float = 1.0):
    """(needles, clusters): the needles in time order of placement and, per depth, the roles
    {card, slot2, slot2_kind ("attribute" | "card"), ordering [a, b], counting [...]} as
    needle indices."""
    from videokv.toyworld import render as tw
    from videokv.toyworld.scenario import Needle

    colors, shapes = list(tw.COLORS), list(tw.SHAPES)
    if len(depths) > 5:
        raise ValueError("at most 5 depths: the toy world's 8 colours and 5 shapes allow 5 clusters per video")
    ns, gs = max(1, round(needle_s * fps)), max(1, round(gap_s * fps))
    margin = max(1, round(0.5 * fps))
    span = 5 * ns + 4 * gs
    if n_frames < len(depths) * (span + 4 * (ns + gs)) + 2 * margin:
        raise ValueError(f"{n_frames / fps:g} s is too short for {len(depths)} needle clusters")
    k = len(depths)
    with_attr = {(j + repeat) % k for j in range(min(ATTRIBUTE_CLUSTERS, k))}
    card_colors = [str(c) for c in rng.permutation(colors)]
    attr_shapes = [str(s) for s in rng.permutation(shapes)[:len(with_attr)]]
    rest_shapes = [s for s in shapes if s not in attr_shapes]
    pairs = [(str(c), s) for s in rest_shapes for c in colors]
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    needles, clusters, taken = [], [], []

    def add(kind, color, start, shape=None, digit=None):
        needles.append(Needle(kind=kind, color=color, shape=shape, digit=digit, t_start=start / fps,
                              t_end=(start + ns) / fps))
        taken.append((start, start + ns))
        return len(needles) - 1

    for j, depth in enumerate(depths):
        start = int(round(depth * n_frames - 2 * (ns + gs) - ns / 2))
        start = min(max(start, margin), n_frames - margin - span)
        slots = [start + i * (ns + gs) for i in range(5)]
        a_pair, b_pair, count_pair = pairs.pop(), pairs.pop(), pairs.pop()
        roles = {"ordering": [add("shape", a_pair[0], slots[0], a_pair[1])]}
        if j in with_attr:
            roles["slot2"] = add("shape", str(rng.choice(colors)), slots[1], attr_shapes.pop())
            roles["slot2_kind"] = "attribute"
        else:
            roles["slot2"] = add("card", card_colors.pop(), slots[1], digit=str(rng.integers(0, 10)))
            roles["slot2_kind"] = "card"
        roles["card"] = add("card", card_colors.pop(), slots[2], digit=str(rng.integers(0, 10)))
        roles["counting"] = [add("shape", count_pair[0], slots[3], count_pair[1])]
        roles["ordering"].append(add("shape", b_pair[0], slots[4], b_pair[1]))
        roles["count_pair"] = count_pair
        clusters.append(roles)
    for roles in clusters:                       # the counting repeats, anywhere free
        for _ in range(int(rng.integers(1, 3))):
            s = _free_start(rng, n_frames, ns, gs, margin, taken)
            roles["counting"].append(add("shape", roles["count_pair"][0], s, roles["count_pair"][1]))
        del roles["count_pair"]
    return needles, clusters


def questions(world, clusters, rng: np.random.Generator, chunk_seconds: float) -> list[dict]:
    """Per cluster: retrieval and temporal (its card), attribute (or a second retrieval),
    ordering and counting, each with its depth (where its needle(s) sit, 0-1)."""
    from videokv.toyworld import scenario

    ev, T = world.events, world.duration

    def depth(*events):
        return round(statistics.fmean((e.start_frame + e.end_frame) / 2 / world.fps for e in events) / T, 4)

    out = []
    for j, roles in enumerate(clusters):
        card, slot2 = ev[roles["card"]], ev[roles["slot2"]]
        a, b = (ev[i] for i in roles["ordering"])
        if rng.random() < 0.5:
            a, b = b, a
        group = sorted((ev[i] for i in roles["counting"]), key=lambda e: e.start_frame)
        made = [(scenario.retrieval_question(card), depth(card)),
                (scenario.attribute_question(slot2) if roles["slot2_kind"] == "attribute"
                 else scenario.retrieval_question(slot2), depth(slot2)),
                (scenario.temporal_question(card, chunk_seconds), depth(card)),
                (scenario.ordering_question(a, b), depth(a, b)),
                (scenario.counting_question(group), depth(group[0]))]
        for q, d in made:
            out.append({**q, "id": f"q{len(out)}", "cluster": j, "needle_depth": d})
    return out


def make(videos: Path, hours: float, depths: list[float], repeat: int, seed: int, fps: float,
         chunk_seconds: float) -> tuple[Path, dict, bool, float]:
    """(video path, ground truth, reused, render seconds); a video whose ground truth records
    the same spec is reused (the same bytes: its ingest is deduplicated)."""
    from videokv.toyworld import scenario
    from videokv.toyworld.synth import GENERATOR_VERSION

    n_frames = int(round(hours * 3600 * fps))
    name = f"long-{hours:g}h-r{repeat}-s{seed}"
    path, truth_path = videos / f"{name}.mp4", videos / f"{name}.json"
    hseed = int(np.random.SeedSequence([seed, n_frames, repeat, 7]).generate_state(1)[0])
    spec = {"layout": LAYOUT_VERSION, "generator": GENERATOR_VERSION, "seed": seed, "haystack_seed": hseed,
            "hours": hours, "repeat": repeat, "depths": depths, "fps": fps, "n_frames": n_frames, "size": list(SIZE)}
    truth = reusable_truth(truth_path, spec) if path.exists() else None
    if truth is not None:
        return path, truth, True, 0.0
    t = time.perf_counter()
    rng = np.random.default_rng([hseed, 2])
    needles, clusters = layout(rng, n_frames, fps, depths, repeat)
    world = scenario.build_needle_world(hseed, n_frames, fps, SIZE, needles)
    qs = questions(world, clusters, rng, chunk_seconds)
    truth = render_world(path, world, n_frames, fps, spec, {
        "clusters": clusters, "questions": qs,
        "events": [{**e.to_dict(), "depth": round((e.start_frame + e.end_frame) / 2 / n_frames, 4)}
                   for e in world.events]})
    return path, truth, False, time.perf_counter() - t
