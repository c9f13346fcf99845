import dataclasses
import json
import time

import pytest

from videokv.engine.config import CompressionConfig, EngineConfig, PrefillConfig
from videokv.models.loading import ModelIntegrityError, ModelNotFoundError, ModelSpec, load_backend, load_folder

from tests.conftest import MODEL_CACHE


def variants(cfg):
    """Every config that differs from cfg in exactly one (possibly nested) field."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            for inner in variants(v):
                yield f"{f.name}.{inner[0]}", dataclasses.replace(cfg, **{f.name: inner[1]})
        else:
            new = {str: lambda x: x + "x", int: lambda x: x + 1, float: lambda x: x + 0.5,
                   type(None): lambda x: "L"}[type(v)](v)
            if f.name in ("window_level",):
                new = "L"
            if f.name == "policy":
                new = "knorm"
            yield f.name, dataclasses.replace(cfg, **{f.name: new})


def test_fingerprint_changes_with_every_field():
    base = EngineConfig()
    seen = {base.fingerprint()}
    names = []
    for name, cfg in variants(base):
        fp = cfg.fingerprint()
        assert fp not in seen, f"changing {name} did not change the fingerprint"
        seen.add(fp)
        names.append(name)
    assert {"weights_id", "dtype", "l_kv.ratio", "h_kv.policy", "prefill.window", "chunk_frames"} <= set(names)
    assert EngineConfig().fingerprint() == base.fingerprint()  # and it is stable


def test_missing_model_path_names_the_setting(tmp_path):
    with pytest.raises(ModelNotFoundError, match="VIDEOKV_MODEL='/no/such/model'"):
        load_backend(ModelSpec(model="/no/such/model", models_dir=tmp_path))


def test_missing_model_path_cli_exit_code(tmp_path, monkeypatch, capsys):
    from videokv.cli import main
    monkeypatch.setenv("VIDEOKV_MODEL", str(tmp_path / "nothing-here"))
    assert main(["selftest"]) == 2
    err = capsys.readouterr().err
    assert "VIDEOKV_MODEL" in err and "no checkpoint folder" in err


def test_embedded_reloads_fast_and_is_verified():
    folder = MODEL_CACHE / "smollm2-135m-instruct-f32"
    load_folder(folder)  # warm the page cache
    t0 = time.perf_counter()
    load_folder(folder, verify=True)
    assert time.perf_counter() - t0 < 1.0
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["weights_sha256"]) == 64


def test_corrupted_converted_weights_are_refused(tmp_path, tokenizer):
    from safetensors.torch import save_file
    from videokv.models.tiny import tiny_backend
    import hashlib

    be = tiny_backend(tokenizer)
    be.model.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in be.model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, tmp_path / "model.safetensors")
    digest = hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps({"weights_sha256": digest}))
    load_folder(tmp_path)  # intact: loads
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="does not match the sha256"):
        load_folder(tmp_path)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError):
        CompressionConfig("avgpool", 0)
    with pytest.raises(ValueError):
        PrefillConfig(window_level="X")
