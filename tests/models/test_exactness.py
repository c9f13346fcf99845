import json
import os
import subprocess
import sys

import pytest

from tests.conftest import MODEL_CACHE
from videokv.models.selftest import TOLERANCE, exactness
from videokv.models.tiny import tiny_backend


@pytest.mark.parametrize("arch,rope", [("llama", "default"), ("llama", "llama3"), ("qwen2", "default"), ("qwen2", "yarn")])
def test_chunked_prefill_matches_full_forward_tiny(tokenizer, arch, rope):
    r = exactness(tiny_backend(tokenizer, arch, rope), n_chunks=5, tokens=24)
    assert r["max_abs_logit_diff"] <= TOLERANCE


def test_exactness_detects_a_wrong_rotation(tokenizer):
    be = tiny_backend(tokenizer, "llama", "yarn")
    be.rotary.unrotate = lambda k, pos: k  # store keys still rotated: must be caught
    assert exactness(be)["max_abs_logit_diff"] > 100 * TOLERANCE


def test_selftest_cli_json(tmp_path):
    env = dict(os.environ, VIDEOKV_HOME=str(tmp_path), VIDEOKV_MODEL_CACHE=str(MODEL_CACHE))
    p = subprocess.run([sys.executable, "-m", "videokv.cli", "selftest", "--json"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads(p.stdout)
    assert report["pass"] is True and report["int_decode"] == "kernel"      # scripts/setup.sh built it
    assert {"smollm2-135m", "tiny-llama-default", "tiny-qwen2-yarn", "tiny-qwen2-vl", "tiny-qwen2.5-vl"} \
        <= set(report["models"])
    assert report["models"]["tiny-qwen2.5-vl"]["visual_tokens"] > 0
    for name, r in report["models"].items():
        assert r["max_abs_logit_diff"] <= TOLERANCE, name


def test_codec_logit_errors_are_within_their_bounds_and_a_broken_codec_is_caught(embedded_backend, monkeypatch):
    from videokv.commands.selftest import CODEC_LOGIT_BOUND, codec_errors
    from videokv.kvstore import codecs

    report = codec_errors(embedded_backend)
    assert set(report) == set(CODEC_LOGIT_BOUND) == set(codecs.CODECS)
    assert all(r["pass"] and r["max_abs_logit_diff"] > 0 for r in report.values()), report
    assert report["fp16"]["max_abs_logit_diff"] < report["int4"]["max_abs_logit_diff"]
    real = codecs.Int8.decode_into
    monkeypatch.setattr(codecs.Int8, "decode_into", lambda self, parts, out, rows=None:
                        real(self, parts, out, rows).mul_(1.05))          # a 5% gain error
    assert not codec_errors(embedded_backend)["int8"]["pass"]
