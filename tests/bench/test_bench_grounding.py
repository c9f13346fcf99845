"""The parts of `videokv bench moments` and `videokv bench dense` that decide what they
measure: the event-dense layouts (several cards and shapes within a few chunks, one shape
twice), the questions and spans per event, how an answer is graded and its span read. The
benches' full runs are too long for the suite (README: their figures)."""

import numpy as np
import pytest

from videokv.bench import dense as bd
from videokv.bench import moments as bm


@pytest.mark.parametrize("seconds,events", [(150, 5), (150, 8), (150, 12), (600, 10), (1800, 12)])
def test_dense_layouts_are_dense_valid_and_have_one_repeated_shape(seconds, events):
    for seed in range(5):
        needles = bd.dense_needles(np.random.default_rng([seed, 28]), seconds, events)
        assert len(needles) == events
        cards = [n for n in needles if n.kind == "card"]
        shapes = [(n.color, n.shape) for n in needles if n.kind == "shape"]
        assert len(cards) >= 2 and len({c.color for c in cards}) == len(cards)       # cards tell apart by colour
        assert len(shapes) - len(set(shapes)) == 1                                    # one pair shown twice
        times = sorted((n.t_start, n.t_end) for n in needles)
        assert all(3 - 1e-9 <= b - a <= 7 + 1e-9 for a, b in times) and times[0][0] >= 0 and times[-1][1] <= seconds - 1
        gaps = [c - b for (_, b), (c, _) in zip(times, times[1:])]
        assert all(g >= 2 - 1e-9 for g in gaps)                                            # never overlapping
        # dense: within a cluster events follow each other within 14 s (three clusters past 5 min)
        assert sum(g > 14 for g in gaps) <= (0 if seconds <= 300 else 2)


def test_event_questions_group_repeats_and_grade_by_any_appearance():
    truth = {"events": [
        {"kind": "card", "color": "red", "shape": None, "t_start": 10.0, "t_end": 15.0},
        {"kind": "shape", "color": "blue", "shape": "star", "t_start": 20.0, "t_end": 23.0},
        {"kind": "shape", "color": "blue", "shape": "star", "t_start": 60.0, "t_end": 63.0},
        {"kind": "shape", "color": "green", "shape": "circle", "t_start": 30.0, "t_end": 33.0}]}
    qs = {q["question"]: q for q in bm.event_questions(truth, 16.0)}
    assert set(qs) == {"When did the red card appear?", "When did the blue star appear?",
                       "When did the green circle appear?"}
    assert qs["When did the blue star appear?"]["kind"] == "repeated shape"
    assert qs["When did the blue star appear?"]["spans"] == [(20.0, 23.0), (60.0, 63.0)]
    assert qs["When did the red card appear?"]["kind"] == "card" and qs["When did the green circle appear?"]["kind"] == "shape"
    star = qs["When did the blue star appear?"]
    assert bm.right(star, "from 60.0s to 63.0s (1:00-1:03)") and bm.right({**star, "tolerance_s": 0}, "at 0:21")
    assert not bm.right({**star, "tolerance_s": 0}, "at 0:40") and not bm.right(star, "I do not know")
    assert bm.stated_span("from 12.0s to 15.0s (0:12-0:15)") == (12.0, 15.0) and bm.stated_span("never") is None
    assert bm.best_iou((60.0, 63.0), star["spans"]) == 1.0 and bm.best_iou(None, star["spans"]) == 0.0


def test_dense_summaries_count_only_questions_a_variant_answered():
    rows = [{"type": "retrieval", "a": {"right": True}}, {"type": "retrieval", "a": {"right": False}},
            {"type": "ordering", "a": {"skipped": "does not fit"}}, {"type": "ordering", "a": {"right": True}}]
    s = bd.summarize(rows, ["a"])["a"]
    assert s["retrieval"] == 0.5 and s["ordering"] == 1.0 and s["counting"] is None
    assert s["all"] == pytest.approx(2 / 3, abs=1e-4) and s["n"] == 3
    assert bd._videos("150x8,1800x12") == [(150.0, 8), (1800.0, 12)]
