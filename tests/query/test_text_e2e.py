"""The text channel end to end on a made video: a banner shown only in minute 7 of a
10-minute "match" (a scoreboard and a ticking clock on screen all along) is read by OCR,
lands in the right chunk's line, is retrieved at rank 1 by the hybrid oracle, and the
answer contains it. Real Tesseract, real model, real LMDB/FAISS."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import make_runtime
from videokv.ingest.text import TextOptions, ToolMissing

pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None,
                                reason="needs tesseract (apt-get install tesseract-ocr tesseract-ocr-eng)")

BANNER = (420.0, 432.0, "GOAL: MARTINEZ")   # minute 7, inside chunk 26 (416-432 s at 16 s/chunk)


@pytest.fixture(scope="module")
def match(tmp_path_factory, embedded_backend):
    from videokv.toyworld.textsynth import make_text_video
    d = tmp_path_factory.mktemp("match")
    path = d / "match.mp4"
    make_text_video(path, 10, banners=[BANNER], speech=[], scoreboard=True, clock=True, seed=3)
    rt = make_runtime(d / "home")
    rt.backend = embedded_backend
    res = rt.pipeline.ingest(path, text=TextOptions(ocr=True, subtitles=False))
    return rt, res, path


def test_ocr_banner_in_minute_7_retrieved_at_rank_1_and_answered(match):
    rt, res, _ = match
    assert res.status == "READY" and res.chunks_total == 38
    assert res.text["ocr"]["ran"] and res.text["ocr"]["segments"] > 0
    goal = 26
    segs = rt.store.get_transcript(res.video_id)["segments"]
    banner = [s for s in segs if "MARTINEZ" in s["text"]]
    assert banner and all(416 <= s["t_start"] and s["t_end"] <= 433 for s in banner), banner
    for q in ("Who scored the goal?", "Which player scored the goal?"):
        hits = rt.queries.retrieve(res.video_id, q, 3)
        assert hits[0].chunk == goal, (q, hits)
    ans = rt.queries.ask(res.video_id, "Who scored the goal?")
    assert ans.evidence[0].chunk == goal and ans.evidence[0].t_start == 416.0
    assert "MARTINEZ" in ans.answer.upper(), ans.answer
    # every chunk shows the scoreboard, so every chunk has a line: H parts keep their text rows
    assert rt.store.get_video(res.video_id).extra["text_chunks"] == list(range(38))


def test_same_file_without_text_is_another_content_and_visual_retrieval(match):
    rt, res, path = match
    plain = rt.pipeline.ingest(path, text=TextOptions(ocr=False, subtitles=False))
    assert plain.video_id != res.video_id and not plain.deduplicated
    assert rt.store.get_transcript(plain.video_id) is None
    assert "text_chunks" not in (rt.store.get_video(plain.video_id).extra or {})
    again = rt.pipeline.ingest(path, text=TextOptions(ocr=True, subtitles=False))
    assert again.video_id == res.video_id and again.deduplicated


def test_enabled_channel_without_its_program_is_a_clear_error(match, monkeypatch, tmp_path):
    rt, _, path = match
    monkeypatch.setenv("PATH", str(tmp_path))          # no tesseract, no pocketsphinx
    before = len(rt.store.list_videos())
    with pytest.raises(ToolMissing, match="apt-get install tesseract-ocr"):
        rt.pipeline.ingest(path, text=TextOptions(ocr=True, subtitles=False, max_tokens=40))
    with pytest.raises(ToolMissing, match="pocketsphinx"):
        rt.pipeline.ingest(path, text=TextOptions(asr=True, subtitles=False))
    assert len(rt.store.list_videos()) == before       # nothing stored
