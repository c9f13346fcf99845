"""`videokv bench needle`: the needle world puts events where asked, the questions' answers
match them, and a tiny bench run (one 64-frame haystack) writes sane JSON, PNG and markdown."""

import json

import numpy as np
import pytest
from PIL import Image

from videokv.bench import _haystack as hs
from videokv.bench import needle as nb
from videokv.query.engine import QueryError
from videokv.toyworld import scenario
from videokv.toyworld.grading import is_correct

SIZE = (160, 120)


@pytest.mark.parametrize("n_frames,depth", [(64, 0.5), (64, 0.1), (256, 0.9), (256, 0.3)])
def test_needle_world_places_events_and_answers_match(n_frames, depth):
    fps = 1.0
    rng = np.random.default_rng([n_frames, int(depth * 10)])
    needles, roles = hs.needle_layout(rng, n_frames, fps, depth)
    world = scenario.build_needle_world(5, n_frames, fps, SIZE, needles)
    assert len(world.events) == len(needles)
    for n, e in zip(needles, world.events):
        assert (e.start_frame, e.end_frame) == (round(n.t_start * fps), round(n.t_end * fps))
        assert (e.obj.kind, e.obj.color, e.obj.shape, e.obj.digit) == (n.kind, n.color, n.shape, n.digit)
        # Drawn exactly while active, not before or after.
        for i, visible in ((e.start_frame, True), (e.mid_frame, True), (e.end_frame - 1, True),
                           (e.start_frame - 1, False), (e.end_frame, False)):
            if 0 <= i < n_frames:
                _, labels = world.render(i, with_labels=True)
                assert any(lab.get("id") == e.index for lab in labels) == visible, (e.index, i)
    spans = sorted((e.start_frame, e.end_frame) for e in world.events)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])) and spans[0][0] >= 0 and spans[-1][1] <= n_frames

    # The card sits at the depth unless the cluster had to move inwards to fit.
    card = world.events[roles["card"]]
    card_mid = (card.start_frame + card.end_frame) / 2
    cluster = [world.events[i] for i in roles["cluster"]]
    shifted = cluster[0].start_frame <= 1 or cluster[-1].end_frame >= n_frames - 1
    assert shifted or abs(card_mid - depth * n_frames) <= 1
    assert [e.start_frame for e in cluster] == sorted(e.start_frame for e in cluster)

    qs = {q["type"]: q for q in hs.needle_questions(world, roles, rng, 16.0)}
    assert set(qs) == set(hs.TYPES)
    assert qs["retrieval"]["answer"] == card.obj.digit and f"the {card.obj.color} card" in qs["retrieval"]["question"]
    attr = world.events[roles["attribute"]]
    assert qs["attribute"]["answer"] == attr.obj.color
    assert [e.obj.shape for e in world.events].count(attr.obj.shape) == 1
    assert attr.obj.shape not in {d.obj.shape for d in world.distractors}
    group = [world.events[i] for i in roles["counting"]]
    assert len({(e.obj.color, e.obj.shape) for e in group}) == 1 and 2 <= len(group) <= 3
    assert qs["counting"]["answer"] == str(sum((e.obj.color, e.obj.shape) == (group[0].obj.color, group[0].obj.shape)
                                               for e in world.events))
    assert (group[0].obj.color, group[0].obj.shape) not in {(d.obj.color, d.obj.shape) for d in world.distractors}
    a, b = (world.events[i] for i in roles["ordering"])
    assert qs["ordering"]["answer"] == f"the {a.obj.name}"          # A is the cluster's first slot
    assert sum(e.obj.name == a.obj.name for e in world.events) == 1
    assert sum(e.obj.name == b.obj.name for e in world.events) == 1
    assert qs["temporal"]["answer_span"] == [card.t_start, card.t_end]
    for q in qs.values():
        assert is_correct(q, str(q["answer"])), q
        assert 0 < q["needle_depth"] < 1
    assert abs(qs["retrieval"]["needle_depth"] - card_mid / n_frames) < 1e-3


def test_counting_is_graded_by_the_count_not_by_listed_times():
    q = {"type": "counting", "answer": 2}
    assert is_correct(q, "The red circle appeared 2 times.")
    assert is_correct(q, "It appeared twice.")
    assert is_correct(q, "The red circle appeared at 128.0s and 160.0s, 2 times.")
    assert not is_correct(q, "The red circle appeared at 2.0s, 1 time.")      # 2 is a time here
    assert not is_correct(q, "The red circle appeared at 12.0s, 20.0s and 32.0s, 3 times.")
    assert is_correct({"type": "counting", "answer": 3}, "three")


def test_needle_world_rejects_bad_needles():
    ok = scenario.Needle("card", "red", 2.0, 5.0, digit="3")
    with pytest.raises(ValueError, match="overlap"):
        scenario.build_needle_world(0, 32, 1.0, SIZE, [ok, scenario.Needle("shape", "blue", 4.0, 6.0, shape="star")])
    with pytest.raises(ValueError, match="outside"):
        scenario.build_needle_world(0, 32, 1.0, SIZE, [scenario.Needle("shape", "blue", 30.0, 34.0, shape="star")])
    with pytest.raises(ValueError, match="lasts"):
        scenario.build_needle_world(0, 32, 1.0, SIZE, [scenario.Needle("shape", "blue", 1.0, 13.0, shape="star")])
    with pytest.raises(ValueError, match="digit"):
        scenario.build_needle_world(0, 32, 1.0, SIZE, [scenario.Needle("card", "blue", 1.0, 3.0)])
    with pytest.raises(ValueError, match="too short"):
        hs.needle_layout(np.random.default_rng(0), 20, 1.0, 0.5)
    card = scenario.build_needle_world(0, 32, 1.0, SIZE, [ok]).events[0]
    assert (card.obj.kind, card.obj.color, card.obj.digit) == ("card", "red", "3")
    assert (card.start_frame, card.end_frame) == (2, 5)


def test_ask_with_caller_chosen_chunks(ingested):
    rt, res = ingested
    calls = rt.queries.retrieve
    rt.queries.retrieve = lambda *a, **k: pytest.fail("retrieval ran although chunks were given")
    try:
        ans = rt.queries.ask(res.video_id, "What digit was shown on the red card?", chunks=[2], max_new_tokens=1)
        with pytest.raises(QueryError, match="out of range"):
            rt.queries.ask(res.video_id, "What digit was shown on the red card?", chunks=[6], max_new_tokens=1)
    finally:
        rt.queries.retrieve = calls
    assert {e.chunk for e in ans.evidence} == {0, 2, 5} and {e.level for e in ans.evidence} == {"L"}
    assert ans.video_prefill_runs == 0


def _run(tmp_path, *extra):
    out = tmp_path / "out" / "needle.json"
    argv = ["--lengths", "64", "--depths", "0.5", "--top-k", "1", "--max-new-tokens", "4", "--seed", "3",
            "--workdir", str(tmp_path / "work"), "--out", str(out), *extra]
    assert nb.main(argv) == 0
    return json.loads(out.read_text()), out


def test_bench_needle_tiny_run(tmp_path, capsys):
    res, out = _run(tmp_path, "--modes", "sparse,bilevel,bilevel-random,dense")
    assert res["bench"] == "needle" and res["partial"] is False
    assert res["config"]["modes"] == ["sparse", "bilevel", "bilevel-random", "dense"]
    assert res["config"]["context_limit"] == res["config"]["max_position_embeddings"] > 0
    [h] = res["haystacks"]
    assert h["frames"] == 64 and h["chunks"] == 4 and h["ingest_s"] > 0 and not h["reused_ingest"]
    assert h["dense_context_tokens"] > 0 and h["dense_kv_bytes"] > 0
    assert [q["type"] for q in res["questions"]] == list(hs.TYPES)
    for q in res["questions"]:
        r = q["results"]
        assert set(r) == {"sparse", "bilevel", "bilevel-random", "dense"}
        assert all("skipped" not in x and x["video_prefill_runs"] == 0 for x in r.values())
        assert r["dense"]["kv_bytes_loaded"] == q["dense_kv_bytes"]
        assert r["sparse"]["kv_bytes_loaded"] < r["bilevel"]["kv_bytes_loaded"] < r["dense"]["kv_bytes_loaded"]
        assert r["sparse"]["context_tokens"] < r["bilevel"]["context_tokens"] < r["dense"]["context_tokens"]
        assert len(q["oracle_top_k"]) == 1 and set(q["oracle_top_k"]) | {0, 3} == set(r["bilevel"]["l_chunks"])
        assert len(r["bilevel-random"]["l_chunks"]) == len(r["bilevel"]["l_chunks"])
        assert {0, 3} <= set(r["bilevel-random"]["l_chunks"]) and r["sparse"]["l_chunks"] == []
        assert r["bilevel-random"]["kv_bytes_loaded"] == pytest.approx(r["bilevel"]["kv_bytes_loaded"], rel=0.05)
        assert r["dense"]["needle_in_l"] and not r["sparse"]["needle_in_l"]
        assert isinstance(q["recall_at_k"], bool) and 0 <= q["events_covered_at_k"] <= 1
        assert all(x["ttft_ms"] > 0 and isinstance(x["correct"], bool) for x in r.values())
    s = res["summary"]
    for m, c in s["by_mode"].items():
        assert c["n"] == 5 and c["skipped"] == 0 and 0 <= c["accuracy"] <= 1, m
        assert 0 < c["bytes_vs_dense"] <= 1
    assert s["by_mode"]["sparse"]["bytes_vs_dense"] < s["by_mode"]["bilevel"]["bytes_vs_dense"] < 1
    assert 0 <= s["recall_at_k"]["overall"] <= 1 and 0 <= s["grid"]["bilevel"]["64"]["0.5"]["accuracy"] <= 1
    assert {(c["length"], c["depth"], c["type"]) for c in s["cells"]} == {(64, 0.5, t) for t in hs.TYPES}
    assert res["timing"]["answers"] == 20 and res["timing"]["ingest_frames_per_s"] > 0

    png, md = out.with_suffix(".png"), out.with_suffix(".md")
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    assert "| 64 |" in md.read_text() and "bilevel-random" in md.read_text()
    printed = capsys.readouterr().out
    assert "haystack 1/1" in printed and "bytes" in printed

    # Again with a tiny context window: the same video is reused and deduplicated, and
    # every mode is recorded as not fitting instead of running.
    res2, _ = _run(tmp_path, "--modes", "dense,sparse", "--max-context", "60")
    [h2] = res2["haystacks"]
    assert h2["reused_video"] and h2["reused_ingest"] and h2["video_id"] == h["video_id"]
    assert h2["ingest_s"] == h["ingest_s"]
    for q in res2["questions"]:
        for x in q["results"].values():
            assert x["skipped"] == "does not fit" and x["needed_positions"] > 60
    assert res2["summary"]["by_mode"]["dense"] == {**res2["summary"]["by_mode"]["dense"], "n": 0, "skipped": 5,
                                                   "accuracy": None}
