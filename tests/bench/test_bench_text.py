"""`videokv bench text` on its quick path (two short made videos, real Tesseract, PocketSphinx,
model and store): the JSON has every part, every summary is the mean of the per-question rows
it sits on, with-text and without-text accuracy are over the same questions, and the ingest
ratios are the measured frames/s next to them."""

import json
import shutil

import pytest
from PIL import Image

from tests.conftest import make_runtime
from videokv.bench import text as bt

pytestmark = pytest.mark.skipif(not all(shutil.which(p) for p in ("tesseract", "pocketsphinx_continuous", "espeak-ng")),
                                reason="needs tesseract, pocketsphinx and espeak-ng")


def _mean(xs):
    xs = list(xs)
    return round(sum(xs) / len(xs), 4)


def test_bench_text_quick(tmp_path, embedded_backend, capsys):
    rt = make_runtime(tmp_path / "home")
    rt.backend = embedded_backend
    out = tmp_path / "out" / "text.json"
    argv = ["--quick", "--minutes", "1", "--max-new-tokens", "12", "--home", str(tmp_path / "home"),
            "--workdir", str(tmp_path / "work"), "--out", str(out)]
    assert bt.main(argv, rt=rt) == 0
    res = json.loads(out.read_text())
    assert res["bench"] == "text" and res["partial"] is False and res["total_s"] > 0
    assert res["config"]["videos"] == ["match", "announcements"] and res["config"]["minutes"] == 1

    # every video: a no-text ingest and one per source it has, each a separate content, all measured
    match, ann = res["videos"]
    assert set(match["ingests"]) == {"none", "ocr", "none_again"}
    assert set(ann["ingests"]) == {"none", "ocr", "asr", "subtitle", "none_again"}
    for v in res["videos"]:
        ing = v["ingests"]
        assert len({r["video_id"] for r in ing.values()}) == len(ing)
        assert {r["frames"] for r in ing.values()} == {60} and {r["chunks"] for r in ing.values()} == {4}
        for ch, r in ing.items():
            assert not r["deduplicated"] and r["frames_per_s"] > 0 and r["seconds"] > 0, (v["kind"], ch)
            assert set(r["extract_s"]) == ({ch} if ch in bt.SOURCES else set()), (v["kind"], ch, r["extract_s"])
            base = (ing["none"]["frames_per_s"] + ing["none_again"]["frames_per_s"]) / 2
            assert v["cost"][ch]["ratio_vs_none"] == round(r["frames_per_s"] / base, 3)
        both = v["cost"]["none"]["ratio_vs_none"] + v["cost"]["none_again"]["ratio_vs_none"]
        assert both == pytest.approx(2, abs=2e-3)
        assert v["cost"]["ocr"]["extract_s"] > 0
    assert res["ingest_cost"]["video"] == "announcements" and res["ingest_cost"]["channels"] == ann["cost"]
    assert ann["cost"]["asr"]["extract_s"] > 0 and ann["cost"]["subtitle"]["segments"] == 4

    # per-question rows: banners on the ocr ingest, speech on the asr and the subtitle ingest
    rows = res["questions"]
    by = {s: [r for r in rows if r["source"] == s] for s in bt.SOURCES}
    assert [len(by[s]) for s in bt.SOURCES] == [6, 4, 4]
    assert {r["kind"] for r in by["ocr"]} == {"screen"}
    assert {r["kind"] for r in by["asr"] + by["subtitle"]} == {"speech"}
    for r in rows:
        assert r["expected_chunks"] and all(0 <= c < 4 for c in r["expected_chunks"])
        for o, top in r["top3"].items():
            assert len(top) <= 3 and all(0 <= c < 4 for c in top)
            for n in bt.KS:
                assert r["hit"][f"{o}@{n}"] == bool(set(top[:n]) & set(r["expected_chunks"]))
        assert r["correct_with_text"] == bt.has_key(r["answer_with_text"], r["keys"])
        assert r["correct_without_text"] == bt.has_key(r["answer_without_text"], r["keys"])
        assert 0 <= r["chance"]["@1"] <= r["chance"]["@3"] <= 1
    # the no-text answer is one per question of a video (both speech sources share it)
    assert [r["answer_without_text"] for r in by["asr"]] == [r["answer_without_text"] for r in by["subtitle"]]
    assert all(r["key_extracted"] and r["key_in_line"] for r in by["subtitle"])   # the exact sentence
    for r in rows:   # the rendered lines are those of the expected chunks, each within the token cap
        assert sorted(map(int, r["lines"])) == r["expected_chunks"]
        assert all(len(embedded_backend.tokenize(x)) <= res["config"]["text_max_tokens"] for x in r["lines"].values())

    # summaries are the means of the rows, with and without text over the same questions
    for s in bt.SOURCES:
        ret, ans = res["retrieval"][s], res["answers"][s]
        assert ret["n"] == ans["n"] == len(by[s]) and ans["questions"] == [r["question"] for r in by[s]]
        for o in ("text", "visual", "hybrid"):
            for n in bt.KS:
                v = ret[o][f"recall@{n}"]
                assert 0 <= v <= 1 and v == _mean(r["hit"][f"{o}@{n}"] for r in by[s])
            assert ret[o]["recall@1"] <= ret[o]["recall@3"]
        assert ans["with_text"] == _mean(r["correct_with_text"] for r in by[s])
        assert ans["without_text"] == _mean(r["correct_without_text"] for r in by[s])
        assert ans["delta"] == round(ans["with_text"] - ans["without_text"], 4)
    assert res["retrieval"]["subtitle"]["text"]["recall@3"] > res["retrieval"]["subtitle"]["chance"]["recall@1"]

    t = res["targets"]
    assert t["text_oracle_recall@1_ocr_ge_0.8"]["value"] == res["retrieval"]["ocr"]["text"]["recall@1"]
    assert set(t["accuracy_with_text_gt_without"]) == set(bt.SOURCES)
    assert all(isinstance(x["met"], bool) for x in t["hybrid_recall@3_ge_0.8"].values())

    with Image.open(out.with_suffix(".png")) as im:
        assert im.format == "PNG" and im.size == (1240, 800)
    md = out.with_suffix(".md").read_text()
    assert "| ocr | 6 |" in md and "| subtitle |" in md
    printed = capsys.readouterr().out
    assert "hybrid" in printed and "with text" in printed and "target accuracy_with_text_gt_without" in printed
