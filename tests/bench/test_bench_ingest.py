"""`videokv bench ingest` on short videos with a small window: chunk-based prefill's peak
memory stays flat while full attention's grows, and the rates are the measured ratios. The
7B-shaped MFU code runs here on a tiny geometry (the real one needs a GPU)."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from videokv.bench import _common
from videokv.bench import ingest as bi
from videokv.bench._mfu import mfu_7b


def test_bench_ingest_flat_memory_with_a_small_window(tmp_path, capsys):
    out = tmp_path / "i.json"
    argv = ["--minutes", "0.75,1.5", "--window", "1", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    assert bi.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["bench"] == "ingest" and res["partial"] is False and res["config"]["window"] == 1
    assert not Path(res["config"]["home"]).exists()                 # the temp store is removed
    assert [(r["frames"], r["chunks"]) for r in res["lengths"]] == [(45, 3), (90, 6)]
    for r in res["lengths"]:
        c, f = r["chunk_based"], r["full_attention"]
        assert r["ingest"]["frames_per_s"] > 0 and not r["ingest"]["deduplicated"]
        for x in (c, f):
            assert x["frames_per_s"] == pytest.approx(r["frames"] / x["seconds"], rel=1e-2)
            assert x["llm_tokens_per_s"] == pytest.approx(x["llm_tokens"] / x["llm_seconds"], rel=1e-2)
            assert x["peak_bytes"] > 0 and x["peak_mb"] == round(x["peak_bytes"] / 2**20, 2)
        # both count the same video tokens; full attention also runs the prompt prefix
        assert f["llm_tokens"] - c["llm_tokens"] == 20
        assert r["chunk_vs_full_llm_tokens_per_s"] == round(c["llm_tokens_per_s"] / f["llm_tokens_per_s"], 3)
    s = res["summary"]
    assert s["chunk_peak_growth_over"] == [0.75, 1.5]
    assert s["chunk_peak_growth"] <= 1.05, s                        # flat with a fixed window ...
    assert s["full_peak_growth"] > 1.3, s                           # ... full attention grows
    assert res["targets"]["chunk_peak_memory_flat"]["met"] and res["mfu_7b"] == {"skipped": "no CUDA device"}
    with Image.open(out.with_suffix(".png")) as im:
        assert im.format == "PNG"
    assert "chunk-based peak memory growth" in capsys.readouterr().out


def test_mfu_code_on_a_tiny_geometry(tokenizer):
    tiny = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 49152}
    # A tiny peak (1 GFLOP/s), so a slow, shared CPU's MFU never rounds to 0 (a loaded run did, at 1 TFLOP/s).
    peak = 1e-3
    m = mfu_7b(tokenizer, "cpu", chunks=3, warmup=1, visual_tokens=32, window=2, peak=peak, geometry=tiny)
    assert m["geometry"]["hidden_size"] == 64 and m["chunks"] == 3 and m["seconds"] > 0
    assert m["mfu"] > 0 and m["forward_only_mfu"] > 0
    # tflops_achieved is rounded to 3 decimals: the MFU agrees with it within that rounding
    assert m["mfu"] == pytest.approx(m["tflops_achieved"] / peak, abs=0.5e-3 / peak + 1e-3)
    # the 7B geometry's parameters, counted as the FLOP formula counts them
    cfg = type("C", (), {**_common.QWEN25_7B, "num_hidden_layers": 28})
    flops = _common.llm_prefill_flops(cfg, 1, 0)
    assert 2 * 6.4e9 < flops < 2 * 7.2e9        # ~6.5 B non-embedding weights
    assert _common.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and _common.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert _common.peak_tflops("NVIDIA H200") == 989.4 and _common.peak_tflops("cpu") is None
    assert torch.get_default_dtype() == torch.float32
