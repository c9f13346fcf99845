"""Moments (query/moments.py, query/grounding.py): frame runs cut from scores, near-duplicates
merged, pages that tile the ranked list, "when" questions recognised and answered in seconds
and mm:ss. The end-to-end checks on a real ingested haystack are in test_counting.py, which
shares its haystack."""

import numpy as np
import pytest

from videokv.query.answers import QueryError
from videokv.query.grounding import asks_when, clock, when_answer
from videokv.query.moments import FrameRuns, Moment, iou, merged, page, page_offset, search_scope
from videokv.toyworld.grading import is_correct


def _adjacent(n: int, breaks=()) -> np.ndarray:
    a = np.ones(n, dtype=bool)
    a[0] = False
    a[list(breaks)] = False
    return a


def test_frame_runs_clear_the_floor_bridge_one_frame_and_stop_at_gaps():
    s = np.array([0.1, 0.1, 0.5, 0.6, 0.5, 0.1, 0.1, 0.55, 0.3, 0.52, 0.1, 0.1])
    runs = FrameRuns(floor=0.45).runs(s, _adjacent(len(s)))
    assert [(a, b) for a, b, _ in runs] == [(2, 4), (7, 9)]          # frame 8 (one below) is bridged
    assert [round(p, 2) for *_, p in runs] == [0.6, 0.55]
    # Frames that are not adjacent (a chunk not loaded between them) never join a run.
    assert [(a, b) for a, b, _ in FrameRuns(floor=0.45).runs(s, _adjacent(len(s), [9]))] == [(2, 4), (7, 7), (9, 9)]
    assert [(a, b) for a, b, _ in FrameRuns(floor=0.45, max_gap=0).runs(s, _adjacent(len(s)))] == [(2, 4), (7, 7), (9, 9)]


def test_a_run_is_trimmed_to_its_peak_and_an_uncalibrated_oracle_uses_the_midpoint():
    s = np.array([0.0, 0.0, 0.0, 0.3, 0.32, 0.9, 0.95, 0.9, 0.31, 0.0, 0.0, 0.0])
    # With the floor at 0.25 the run is frames 3-8; its frames near the peak are 5-7.
    assert [(a, b) for a, b, _ in FrameRuns(floor=0.25).runs(s, _adjacent(len(s)))] == [(5, 7)]
    # No floor: midpoint of median (0) and best (0.95).
    assert [(a, b) for a, b, _ in FrameRuns().runs(s, _adjacent(len(s)))] == [(5, 7)]
    # A floor nothing clears: still the best the video has (search shows it; min_score filters).
    assert [(a, b) for a, b, _ in FrameRuns(floor=0.99).runs(s, _adjacent(len(s)))] == [(5, 7)]
    assert FrameRuns(floor=0.5).runs(np.zeros(0), np.zeros(0, dtype=bool)) == []


def test_near_duplicates_merge_within_a_source_and_across_sources_by_iou():
    ms = [Moment("v", 10, 13, 0.5, "visual", 0), Moment("v", 13.5, 15, 0.6, "visual", 0),   # touch: one
          Moment("v", 30, 33, 0.4, "visual", 1),
          Moment("v", 10, 14, 0.45, "ocr", 0, "GOAL"),          # IoU 0.8 with the merged visual one: dropped
          Moment("v", 40, 50, 0.7, "ocr", 2, "GOAL"), Moment("v", 50, 52, 0.2, "ocr", 3, "GOAL"),   # same text
          Moment("v", 52, 55, 0.3, "ocr", 3, "FOUL"),           # other text: kept apart
          Moment("w", 10, 13, 0.55, "visual", 0)]               # another video: never merged
    got = [(m.video_id, m.start, m.end, m.score, m.source) for m in merged(ms)]
    assert got == [("v", 40, 52, 0.7, "ocr"), ("v", 10, 15, 0.6, "visual"), ("w", 10, 13, 0.55, "visual"),
                   ("v", 30, 33, 0.4, "visual"), ("v", 52, 55, 0.3, "ocr")]
    assert [m.start for m in ms[:2]] == [10, 13.5]               # the inputs are not changed
    assert iou((0, 4), (2, 6)) == pytest.approx(1 / 3) and iou((0, 1), (2, 3)) == 0.0 and iou((1, 1), (1, 1)) == 0.0


def test_pages_tile_the_ranked_list_and_a_token_is_bound_to_its_search():
    ranked = [Moment("v", float(i), i + 1.0, 1.0 - i / 100, "visual", 0) for i in range(23)]
    scope = search_scope("a red card", "acme", None, None)
    got, token, pages = [], None, 0
    while True:
        part, token = page(ranked, page_offset(token, scope), 10, scope)
        got += part
        pages += 1
        if token is None:
            break
    assert got == ranked and pages == 3
    with pytest.raises(QueryError, match="another search"):
        page_offset(page(ranked, 0, 10, scope)[1], search_scope("a red card", "globex", None, None))
    with pytest.raises(QueryError, match="another search"):
        page_offset(page(ranked, 0, 10, scope)[1], search_scope("a red card", "acme", None, 0.5))
    with pytest.raises(QueryError, match="not one this service issued"):
        page_offset("%%%", scope)
    assert page(ranked, 20, 10, scope)[1] is None and page([], 0, 10, scope) == ([], None)


def test_when_questions_are_recognised_and_answered_in_seconds_and_clock_time():
    assert asks_when("When did the purple card appear?") and asks_when("at what time was the goal shown?")
    assert asks_when("What time did the goal happen?") and asks_when("When was the train to Leeds announced?")
    assert not asks_when("When is the homework due?") and not asks_when("What time does the train leave?")
    assert not asks_when("What digit was shown on the red card?") and not asks_when("Which appeared first?")
    assert clock(75.4) == "1:15" and clock(3725) == "1:02:05" and clock(0) == "0:00"
    m = Moment("v", 148.0, 153.0, 0.6, "visual", 9)
    text = when_answer("When did the purple card appear?", m)
    assert text == "The purple card appeared from 148.0s to 153.0s (2:28-2:33)."
    qa = {"type": "temporal", "answer_span": [148.0, 153.0], "tolerance_s": 0.0}
    assert is_correct(qa, text) and not is_correct({**qa, "answer_span": [160.0, 170.0]}, text)
    ocr = when_answer("When was it shown?", Moment("v", 40, 52, 7.0, "ocr", 2, "GOAL: MARTINEZ"))
    assert ocr == 'It appeared from 40.0s to 52.0s (0:40-0:52), on screen: "GOAL: MARTINEZ".'
