"""The span counter (query/counting.py): runs of chunks over a threshold, the sentence it
answers with, which questions it takes; and, on a real needle haystack ingested by the
embedded model, the count of a pair shown several times, with its spans as evidence."""

import json

import pytest
from PIL import Image

from tests.conftest import make_runtime
from videokv.bench import counting as cb
from videokv.bench import needle as nb
from videokv.query.counting import SpanCounter, asks_count, counter_for, subject_of
from videokv.query.engine import QueryEngine, QueryError
from videokv.query.moments import iou
from videokv.toyworld.grading import counts_in, evidence_hits, is_correct


def test_runs_of_chunks_over_the_threshold_count_once_each():
    scores = {0: 0.1, 1: 0.5, 2: 0.45, 3: 0.1, 4: 0.39, 5: 0.6, 6: 0.1, 7: 0.7}
    assert SpanCounter(0.4).spans(scores) == [[1, 2], [5], [7]]
    assert SpanCounter(0.4).spans(dict(reversed(scores.items()))) == [[1, 2], [5], [7]]
    assert SpanCounter(0.4, max_gap=1).spans(scores) == [[1, 2], [5, 7]]     # chunk 6 bridged
    assert SpanCounter(0.35).spans(scores) == [[1, 2], [4, 5], [7]]
    assert SpanCounter(0.8).spans(scores) == []
    assert SpanCounter(0.8).spans(scores, threshold=0.55) == [[5], [7]]


def test_answers_state_the_count_and_grade_as_counts():
    q = "How many times did a red circle appear?"
    two = SpanCounter(0.4).answer(q, [(16.0, 48.0), (80.0, 96.0)])
    assert two == "The red circle appeared 2 times (16-48s, 80-96s)."
    assert is_correct({"type": "counting", "answer": "2"}, two)
    assert not is_correct({"type": "counting", "answer": "1"}, two)   # listed times' digits are not the count
    assert counts_in(SpanCounter(0.4).answer(q, [])) == ["0"]
    one = SpanCounter(0.4).answer("how often was the blue card shown?", [(48.0, 51.5)])
    assert one == "The blue card appeared 1 time (48-52s)."
    assert SpanCounter(0.4).answer("How many times?", [(3.0, 4.0)]).startswith("It appeared 1 time")


def test_only_how_many_times_questions_go_to_the_counter():
    assert asks_count("How many times did a red circle appear?") and asks_count("how often does it show up")
    assert not asks_count("What digit was shown on the red card?")
    assert not asks_count("How many cards are there?")
    assert subject_of("How many times did a red circle appear?") == "red circle"
    assert subject_of("How many times did the white cross appear in the video?") == "white cross"
    assert subject_of("How many times?") is None


def test_counter_for_takes_the_given_threshold_else_the_calibrated_one():
    from types import SimpleNamespace
    uncalibrated = SimpleNamespace(identity="some-other-oracle")
    assert counter_for(uncalibrated) is None
    assert counter_for(uncalibrated, 0.3).threshold == 0.3
    assert counter_for(uncalibrated, 0.3).frame_threshold is None
    calibrated = SimpleNamespace(count_thresholds={"chunk": 0.325, "frame": 0.45})
    c = counter_for(calibrated)
    assert (c.threshold, c.frame_threshold) == (0.325, 0.45)
    assert counter_for(calibrated, 0.9).threshold == 0.9


def test_the_calibration_travels_with_the_weights(tmp_path, caplog):
    """The toy world's thresholds are read from its weights' manifest, whatever the oracle's
    identity (a retrain changes it); measured on other tower weights, they still count, with a
    warning that says how to measure them again."""
    import json
    import shutil

    from videokv.hashing import sha256_file
    from videokv.toyworld.loader import count_calibration, toyworld_dir

    shipped = sha256_file(toyworld_dir() / "tower.safetensors")
    with caplog.at_level("WARNING"):
        assert count_calibration(shipped) == {"chunk": 0.325, "frame": 0.45}
    assert not caplog.records
    with caplog.at_level("WARNING"):
        assert count_calibration("0" * 64) == {"chunk": 0.325, "frame": 0.45}
    assert "bench counting --install" in caplog.text
    folder = tmp_path / "weights"
    shutil.copytree(toyworld_dir(), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["count_calibration"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert count_calibration(shipped, folder) is None


@pytest.fixture(scope="module")
def haystack(tmp_path_factory, embedded_backend):
    """A 256-frame needle haystack (16 chunks) whose counting pair (a blue circle) is shown 3
    times, in chunks 4-5, 7 and 11-12: no two appearances in the same or adjacent chunks."""
    rt = make_runtime(tmp_path_factory.mktemp("home"))
    rt.backend = embedded_backend
    path, truth, _, _ = nb.make_haystack(tmp_path_factory.mktemp("videos"), 256, 0.3, 0, 15, 1.0, 3.0, 1.0, 16.0)
    res = rt.pipeline.ingest(path)
    return rt, res.video_id, truth


def test_counting_questions_are_counted_by_the_oracle_and_cite_every_appearance(haystack):
    rt, vid, truth = haystack
    [qa] = [q for q in truth["questions"] if q["type"] == "counting"]
    assert qa["answer"] == "3"
    assert rt.queries.counter is not None and rt.queries.oracle.count_thresholds == {"chunk": 0.325, "frame": 0.45}
    fv = rt.store.frame_vectors(vid, rt.queries.oracle.identity, rt.queries.oracle.dim)
    assert sorted(fv) == list(range(16)) and all(m.shape == (16, rt.queries.oracle.dim) for m in fv.values())
    ans = rt.queries.ask(vid, qa["question"])
    assert ans.extra["answered_by"] == "span-counter" and ans.extra["counted_over"] == "frames"
    assert ans.extra["count"] == 3, ans.answer
    for i in qa["event_ids"]:        # each counted span is that appearance's time, within a frame
        e = next(x for x in truth["events"] if x["id"] == i)
        assert any(abs(a - e["t_start"]) <= 1.0 and abs(b - e["t_end"]) <= 1.0 for a, b in ans.extra["spans"]), \
            (e["t_start"], e["t_end"], ans.extra["spans"])
    assert is_correct(qa, ans.answer) and ans.kv_bytes_loaded == 0 and ans.video_prefill_runs == 0
    ev = [e.__dict__ for e in ans.evidence]
    for i in qa["event_ids"]:                                   # every appearance is cited
        assert evidence_hits({"event_ids": [i]}, truth["events"], ev), (i, ans.answer)
    names = {e["name"] for e in truth["events"]} | set(truth["distractors"])
    missing = next(f"{c} {s}" for c in ("green", "yellow", "white") for s in ("star", "cross", "square")
                   if f"{c} {s}" not in names)
    absent = rt.queries.ask(vid, f"How many times did a {missing} appear?")
    assert absent.extra["count"] == 0 and "0 times" in absent.answer, absent.answer

    # The LLM answers when asked to, and every other question is decoded as before.
    lm = rt.queries.ask(vid, qa["question"], count_by="lm", max_new_tokens=8)
    assert "answered_by" not in lm.extra and lm.kv_bytes_loaded > 0
    other = rt.queries.ask(vid, "What digit was shown on the red card?", max_new_tokens=4)
    assert "answered_by" not in other.extra and other.kv_bytes_loaded > 0
    with pytest.raises(QueryError, match="count_by"):
        rt.queries.ask(vid, qa["question"], count_by="guess")

    # Without a frame threshold, the counter falls back to the indexed chunk scores.
    q = rt.queries
    chunky = QueryEngine(q.backend, q.store, q.config, q.oracle, counter=SpanCounter(q.counter.threshold))
    by_chunk = chunky.ask(vid, qa["question"])
    assert by_chunk.extra["counted_over"] == "chunks" and by_chunk.extra["count"] == 3, by_chunk.answer


def test_an_engine_without_a_counter_leaves_counting_to_the_llm(haystack):
    rt, vid, truth = haystack
    q = rt.queries
    bare = QueryEngine(q.backend, q.store, q.config, q.oracle, counter=None)
    [qa] = [x for x in truth["questions"] if x["type"] == "counting"]
    ans = bare.ask(vid, qa["question"], max_new_tokens=8)
    assert "answered_by" not in ans.extra and ans.kv_bytes_loaded > 0
    with pytest.raises(QueryError, match="no calibrated count threshold"):
        bare.ask(vid, qa["question"], count_by="oracle")


def test_when_questions_are_answered_by_the_best_moment_to_a_frame(haystack):
    """The card's "when" question: its moment is the card's own span (not a chunk's start),
    stated in seconds and mm:ss and cited as evidence; the LLM still answers when asked to."""
    rt, vid, truth = haystack
    [qa] = [q for q in truth["questions"] if q["type"] == "temporal"]
    card = next(e for e in truth["events"] if e["kind"] == "card")
    ans = rt.queries.ask(vid, qa["question"])
    assert ans.extra["answered_by"] == "moments" and ans.kv_bytes_loaded == 0, ans.answer
    [ev] = ans.evidence
    assert ev.level == "moment" and iou((ev.t_start, ev.t_end), (card["t_start"], card["t_end"])) >= 0.5, ev
    assert is_correct({**qa, "tolerance_s": 0.0}, ans.answer), ans.answer      # inside the span itself
    assert ans.moments[0]["start"] == ev.t_start and ans.moments[0]["source"] == "visual"
    lm = rt.queries.ask(vid, qa["question"], when_by="lm", max_new_tokens=8)
    assert "answered_by" not in lm.extra and lm.kv_bytes_loaded > 0 and lm.moments == ans.moments
    with pytest.raises(QueryError, match="when_by"):
        rt.queries.ask(vid, qa["question"], when_by="guess")
    # Adaptive top-k: the card stands clear of every other moment, so only its chunks load at L.
    q = rt.queries
    focused = QueryEngine(q.backend, q.store, q.config, q.oracle, adaptive_margin=0.05)
    [rq] = [x for x in truth["questions"] if x["type"] == "retrieval"]
    chunks, moments = focused.grounding.focus(rt.store.get_video(vid), rq["question"], 0.05)
    assert chunks and all(s.t_start < card["t_end"] and card["t_start"] < s.t_end
                          for s in rt.store.get_video(vid).plan if s.index in chunks), chunks
    got = focused.ask(vid, rq["question"], max_new_tokens=4)
    assert got.levels["L"] == len(chunks) and {e.chunk for e in got.evidence if e.level == "L"} == set(chunks)
    # the answer carries the moments the focus found (the search is not run again)
    assert got.moments == [m.to_dict() for m in moments[:focused.answer_moments]]
    assert got.moments == focused.best_moments(rt.store.get_video(vid), rq["question"])
    # A search across the tenant's videos finds the same moment first; another tenant, none.
    found, _ = rt.queries.moments(f"the {card['color']} card", tenant="default")
    assert found[0].video_id == vid and (found[0].start, found[0].end) == (ev.t_start, ev.t_end)
    assert rt.queries.moments(f"the {card['color']} card", tenant="someone-else") == ([], None)


def test_frame_vectors_go_with_the_video_and_bad_ones_are_refused(haystack):
    rt, vid, truth = haystack
    rec = rt.store.get_video(vid)
    env = rt.store.env
    prefix = (rec.content_key + "/").encode()

    def frame_keys():
        with env.read() as txn:
            return [k for k, _ in txn.scan("embeddings", prefix=prefix, keys_only=True) if b"/frames:" in k]
    assert len(frame_keys()) == rec.chunks_total
    # Without per-frame vectors (a chunk's are gone: stored before they were kept), moments
    # fall back to whole chunks and say so.
    gone = frame_keys()[3]
    env.write(lambda txn: txn.delete("embeddings", gone))
    card = next(e for e in truth["events"] if e["kind"] == "card")
    got = rt.queries.grounding.in_video(rec, f"the {card['color']} card")
    spans = {(s.t_start, s.t_end) for s in rec.plan}
    assert got and all(m.source == "chunk" and (m.start, m.end) in spans for m in got)
    assert got[0].start <= card["t_start"] < got[0].end
    chunk = rt.store.read_chunk(vid, 0, "L")
    with pytest.raises(ValueError, match="frames, dim"):
        rt.store.put_chunk(vid, [chunk], None, {"x": [1.0, 2.0]})
    assert rt.store.delete_video(vid)
    assert frame_keys() == []


def test_bench_counting_tiny_run(tmp_path, capsys):
    """One 256-frame haystack, no LLM: questions of every truth, both sweeps, the outputs."""
    out = tmp_path / "counting.json"
    assert cb.main(["--lengths", "256", "--depths", "0.5", "--repeats", "1", "--no-lm", "--thresholds", "0.3,0.6",
                    "--frame-thresholds", "0.45,0.9",
                    "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n"]["0"] == 1 and res["n"]["1"] >= 1 and res["n"]["2-3"] == 1 and res["lm"] is None
    assert all(len(r["scores"]) == 16 and set(r["frame_counter"]) == {"0.45", "0.9"} for r in res["rows"])
    # Nothing scores 0.9, so that threshold counts 0 everywhere: right only for the absent pair.
    assert res["sweep_frames"]["all"]["0.9"] == pytest.approx(1 / res["n"]["all"], abs=1e-3)
    assert res["at"]["per frame, shipped"]["threshold"] == 0.45
    with Image.open(out.with_suffix(".png")) as im:
        assert im.format == "PNG" and im.size == (900, 460)
    assert "Per frame, by threshold" in out.with_suffix(".md").read_text()
    assert "span counter per frame, shipped threshold 0.45" in capsys.readouterr().out
    # --install's writing: the run's best thresholds, into a copy of the weights' manifest
    import shutil

    from videokv.hashing import sha256_file
    from videokv.toyworld.loader import count_calibration, toyworld_dir
    folder = tmp_path / "weights"
    shutil.copytree(toyworld_dir(), folder)
    cb.install_calibration(res, folder)
    tower = sha256_file(folder / "tower.safetensors")
    got = count_calibration(tower, folder)
    assert got == {"chunk": res["at"]["per chunk, best"]["threshold"], "frame": res["at"]["per frame, best"]["threshold"]}
