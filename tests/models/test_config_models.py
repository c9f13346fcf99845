import dataclasses
import json

import pytest
import torch

from tests.conftest import MODEL_CACHE
from videokv.engine.config import CompressionConfig, EngineConfig, PrefillConfig
from videokv.models.loading import ModelIntegrityError, ModelNotFoundError, ModelSpec, load_backend, load_folder


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


def test_embedded_loads_from_meta_equal_to_the_stored_weights():
    """The fast load (model built on the meta device, the safetensors assigned) gives exactly
    the stored weights, tied lm_head included, nothing left on meta, and rotary buffers equal
    to a normally built model's (they are not in the state dict and are recomputed)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = MODEL_CACHE / "smollm2-135m-instruct-f32"
    model, _, weights_id = load_folder(folder, verify=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert weights_id == manifest["weights_sha256"][:16]
    state = load_file(folder / "model.safetensors")
    got = dict(model.named_parameters())
    assert set(state) <= set(got)
    assert all(torch.equal(got[k], v) for k, v in state.items())
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    reference = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    assert torch.equal(model.model.rotary_emb.inv_freq, reference.model.rotary_emb.inv_freq)


def test_corrupted_converted_weights_are_refused(tmp_path, tokenizer):
    import hashlib

    from safetensors.torch import save_file

    from videokv.models.tiny import tiny_backend

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
    with pytest.raises(ValueError, match="compression ratio must be >= 1, got 0"):
        CompressionConfig("avgpool", 0)
    with pytest.raises(ValueError, match="prefill level must be 'H', 'L' or 'full', got 'X'"):
        PrefillConfig(window_level="X")


def test_the_weights_identity_names_the_tokenizer_and_chat_template(tmp_path, tokenizer):
    """Same weights, another chat template: another weights id, so another fingerprint, and
    KVs made through one template are never read through the other."""
    from safetensors.torch import save_file

    from videokv.models.checkpoints import tokenizer_identity
    from videokv.models.tiny import tiny_backend

    be = tiny_backend(tokenizer)
    ids = []
    for template in ("{{ messages[0]['content'] }}", "{{ messages[-1]['content'] }}"):
        folder = tmp_path / str(len(ids))
        be.model.config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": template}))
        (folder / "chat_template.jinja").unlink(missing_ok=True)
        state = {k: v.contiguous() for k, v in be.model.state_dict().items() if k != "lm_head.weight"}
        save_file(state, folder / "model.safetensors")
        ids.append(load_backend(ModelSpec(model=str(folder), device="cpu")).weights_id)
    assert ids[0] != ids[1] and ids[0].split("-tok")[0] == ids[1].split("-tok")[0]
    assert tokenizer_identity(tokenizer) == tokenizer_identity(tokenizer)
    assert tokenizer_identity(tokenizer, "x") != tokenizer_identity(tokenizer, "y")


def test_a_video_made_under_another_fingerprint_asks_for_a_re_ingest(ingested):
    """Old stores (made before a change of anything in the fingerprint: sampling, tokenizer,
    ...) are refused with a clear sentence, never read."""
    import dataclasses as dc

    from videokv.query.engine import QueryEngine, QueryError

    rt, res = ingested
    other = dc.replace(rt.config, max_frames=2048)
    assert other.fingerprint() != rt.config.fingerprint()
    engine = QueryEngine(rt.backend, rt.store, other, rt.oracle)
    with pytest.raises(QueryError, match="re-ingest it with the current settings"):
        engine.ask(res.video_id, "What digit was shown on the red card?")
