"""`videokv bench quant` on one small haystack with two codecs: every figure the README table
prints is in the JSON and consistent with the stores and rows it comes from."""

import json

from PIL import Image

from tests.conftest import MODEL_CACHE
from videokv.bench._common import PALETTE


def test_bench_quant_tiny_run(tmp_path, monkeypatch):
    from videokv.bench.quant import main, qwen7b_gb_per_hour

    monkeypatch.setenv("VIDEOKV_MODEL_CACHE", str(MODEL_CACHE))
    out = tmp_path / "quant.json"
    assert main(["--lengths", "64", "--depths", "0.5", "--codecs", "none,int4", "--repeats", "1",
                 "--max-new-tokens", "4", "--types", "retrieval,attribute", "--workdir", str(tmp_path / "w"),
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    none, int4 = r["codecs"]["none"], r["codecs"]["int4"]
    assert len(r["questions"]) == 2 and {q["type"] for q in r["questions"]} == {"retrieval", "attribute"}
    # No bf16 run: the float32 reference's bytes at 2 bytes a value stand for bf16.
    assert none["bytes_ratio_vs_bf16"] == 2.0 and 0.2 < int4["bytes_ratio_vs_bf16"] <= 0.30
    assert abs(int4["stored_bytes"] / none["stored_bytes"] * 2 - int4["bytes_ratio_vs_bf16"]) < 1e-4
    assert int4["bytes_paged_per_question"] < none["bytes_paged_per_question"] / 3
    assert none["max_abs_logit_diff"] == 0 and int4["max_abs_logit_diff"] > 0
    agree = sum(q["codecs"]["int4"]["answer"] == q["codecs"]["none"]["answer"] for q in r["questions"]) / 2
    assert int4["answer_agreement"] == agree
    right = sum(q["codecs"]["int4"]["correct"] for q in r["questions"]) / 2
    assert int4["accuracy"] == right and int4["accuracy_delta_pts"] == round(100 * (right - none["accuracy"]), 2)
    assert int4["bytes_per_hour_qwen25_7b_gb"] == round(qwen7b_gb_per_hour("int4"), 2) < \
        none["bytes_per_hour_qwen25_7b_gb"] / 3
    assert set(r["targets"]) == {"int4"} and int4["ttft_cold_ms"] > 0 and int4["hot_set_read_gb_s"] > 0
    assert int4["ttft_disk_ms"] > 0 and 0 <= int4["disk_resident_after_drop"] <= 1
    assert int4["ttft_cold_runs_ms"] == [int4["ttft_cold_ms"]] and len(none["load_cold_runs_ms"]) == 1   # one repeat
    for c in (none, int4):                  # the KV paging is a share of the time to first token
        assert 0 < c["load_cold_ms"] < c["ttft_cold_ms"] and 0 < c["load_disk_ms"] < c["ttft_disk_ms"]
    # int4 decoded by the one-pass kernel, and the same cold question by torch's decode beside it.
    assert r["config"]["int_decode"] == "kernel" and "ttft_cold_torch_decode_ms" not in none
    assert 0 < int4["load_cold_torch_decode_ms"] < int4["ttft_cold_torch_decode_ms"]
    md = out.with_suffix(".md").read_text()
    assert "| int4 |" in md and "int4, the same cold questions with torch's decode" in md
    # Two panels (accuracy, logit change), each with int4's point in its own colour (below the
    # legend, which every series gets whether its point is drawn or not).
    img = Image.open(out.with_suffix(".png")).convert("RGB")
    assert img.size == (1240, 420)
    for half in (img.crop((0, 48, 620, 420)), img.crop((620, 48, 1240, 420))):
        assert PALETTE["int4"] in {c for _, c in half.getcolors(1 << 20)}
