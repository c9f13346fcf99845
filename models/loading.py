"""Loading backends: the embedded default (`embedded.py`) and local checkpoint folders, whose
config.json `model_type` picks the backend (`SUPPORTED`). Nothing is fetched.

A text LLM needs a vision tower. `load_backend` takes it from `attach_vision` when given: a
callable the composition root passes to plug a trained tower (and any LoRA it comes with)
into the loaded model, the way the toy world's does. Without one, the untrained `PatchTower`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from videokv.engine.backend import HFCausalBackend
from videokv.engine.vision import VisionTower
from videokv.hashing import sha256_file

from .checkpoints import (
    ModelIntegrityError,
    ModelNotFoundError,
    UnsupportedModelError,
    checkpoint_id,
    quiet_progress,
    require_checkpoint,
    tokenizer_identity,
)
from .embedded import EMBEDDED, convert_embedded
from .patch import PatchTower
from .qwen_vl import QWEN_VL_TYPES, load_qwen_vl

CAUSAL_TYPES = {"llama", "qwen2", "mistral"}
# model_type -> what runs it; the order of the error message listing them.
SUPPORTED = {
    "llama": "Llama-style text LLM (frames through VIDEOKV_VISION)",
    "mistral": "Mistral text LLM (frames through VIDEOKV_VISION)",
    "qwen2": "Qwen2 text LLM (frames through VIDEOKV_VISION)",
    "qwen2_vl": "Qwen2-VL (its own vision tower)",
    "qwen2_5_vl": "Qwen2.5-VL (its own vision tower)",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelSpec:
    """What to load. model: EMBEDDED or a checkpoint folder; device: "auto", "cpu", "cuda"...;
    models_dir: where the embedded model is converted to; frame_wh: (W, H) frames for models
    with their own tower (None: the model's default); sample_fps: frames per second the video
    is sampled at (Qwen-VL temporal positions)."""

    model: str = EMBEDDED
    models_dir: Path = Path(".")
    dtype: str = "float32"
    device: str = "auto"
    tokens_per_frame: int = 8
    frame_wh: tuple[int, int] | None = None
    sample_fps: float = 1.0


# (model, tokenizer, spec) -> (tower, identity of what it added to the weights, e.g. a LoRA)
AttachVision = Callable[[torch.nn.Module, object, ModelSpec], tuple[VisionTower, str]]


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is available, else "cpu"; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


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


def load_folder(path: Path, dtype: str = "float32", device: str = "cpu", verify: bool = True):
    """(model, tokenizer, weights_id) from a converted or HF-style folder (weights_id: the
    weights' hash; `load_backend` adds the tokenizer's identity).

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
    model = model.to(device=device, dtype=DTYPES[dtype]).eval()
    return model, tok, weights_id


def load_backend(spec: ModelSpec, attach_vision: AttachVision | None = None,
                 verify: bool = True) -> HFCausalBackend:
    """The backend for `spec.model`: the embedded default or a local folder, whose config.json
    model_type selects the backend (Qwen2-VL / Qwen2.5-VL bring their own vision tower; text
    LLMs get `attach_vision`'s, else the untrained PatchTower)."""
    device = resolve_device(spec.device)
    if spec.model == EMBEDDED:
        folder = convert_embedded(spec.models_dir)
    else:
        folder = require_checkpoint(spec.model, "VIDEOKV_MODEL", f"checkpoint folder (or '{EMBEDDED}' for the "
                                    "embedded default)")
        model_type = checkpoint_type(folder)        # unsupported architectures stop here
        if model_type in QWEN_VL_TYPES:
            if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
                raise ModelNotFoundError(f"VIDEOKV_MODEL={spec.model!r}: {model_type} config.json but no "
                                         "weights (*.safetensors) in that folder; copy the whole checkpoint there")
            t0 = time.perf_counter()
            with quiet_progress():
                backend = load_qwen_vl(folder, model_type, checkpoint_id(folder), DTYPES[spec.dtype],
                                       device, spec.frame_wh, spec.sample_fps)
            backend.load_seconds = time.perf_counter() - t0
            return backend
    t0 = time.perf_counter()
    model, tok, weights_id = load_folder(folder, spec.dtype, device, verify=verify)
    # The identity names the tokenizer and chat template too: they decide the tokens a
    # prompt and a timestamp become, and so the stored KVs.
    weights_id = f"{weights_id}-tok{tokenizer_identity(tok)}"
    if attach_vision is not None:
        vision, added_id = attach_vision(model, tok, spec)
        weights_id = f"{weights_id}+{added_id}"
    else:
        vision = PatchTower(model.config.hidden_size, spec.tokens_per_frame).to(device)
    backend = HFCausalBackend(model, tok, vision=vision, weights_id=weights_id)
    backend.load_seconds = time.perf_counter() - t0
    return backend
