"""The toy world's trained weights, plugged into the embedded LLM the way any trained tower
plugs in (`models.loading.AttachVision`): the LoRA adapter is merged into the LLM and the
tower is loaded, both checked against manifest.json's sha256 first. Shipped in
`toyworld/weights/` (inside the package), never fetched."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from videokv.errors import VideoKVError
from videokv.hashing import sha256_file
from videokv.models import lora
from videokv.models.checkpoints import ModelIntegrityError, ModelNotFoundError

from . import WEIGHTS_DIR

log = logging.getLogger("videokv.toyworld")



class ToyWorldConfigError(VideoKVError, ValueError):
    """Settings the shipped toy-world weights cannot run with (names the setting to change)."""

    code = "bad_setting"


def toyworld_dir() -> Path:
    """The shipped weights folder (tower, adapter, manifest, model card)."""
    return WEIGHTS_DIR


def read_manifest(folder: Path | None = None) -> dict:
    manifest_path = (folder or toyworld_dir()) / "manifest.json"
    if not manifest_path.is_file():
        raise ModelNotFoundError(f"the toy-world weights are missing ({manifest_path}); reinstall videokv, "
                                 "or set VIDEOKV_VISION=patch for the untrained tower")
    return json.loads(manifest_path.read_text())


def check_tokens_per_frame(tokens_per_frame: int, folder: Path | None = None) -> None:
    """The shipped weights were trained for one number of visual tokens per frame."""
    tpf = read_manifest(folder).get("tokens_per_frame", tokens_per_frame)
    if tokens_per_frame != tpf:
        raise ToyWorldConfigError(f"the toy-world model was trained with VIDEOKV_TOKENS_PER_FRAME={tpf}, got "
                                  f"{tokens_per_frame}: set VIDEOKV_TOKENS_PER_FRAME={tpf}, or VIDEOKV_VISION=patch")


def load_toyworld(model, tokenizer, tokens_per_frame: int, device: str = "cpu", folder: Path | None = None):
    """Merge the toy-world LLM adapter into `model` (in place) and load the trained tower.

    Both files are checked against manifest.json's sha256 first. Returns (tower, adapter id)."""
    from safetensors.torch import load_file

    from .tower import ToyWorldTower, caption_piece_embeddings

    folder = folder or toyworld_dir()
    manifest = read_manifest(folder)
    for name in ("tower.safetensors", "adapter.safetensors"):
        got = sha256_file(folder / name) if (folder / name).is_file() else "missing"
        if got != manifest["files"][name]:
            raise ModelIntegrityError(f"{folder / name} does not match the sha256 in {folder / 'manifest.json'} "
                                      f"({got[:12]} != {manifest['files'][name][:12]}); reinstall videokv "
                                      "or retrain with `videokv train-vision`")
    check_tokens_per_frame(tokens_per_frame, folder)
    state = load_file(folder / "adapter.safetensors")
    lora.merge(model, state, float(manifest["adapter"]["alpha"]))
    embeds = caption_piece_embeddings(tokenizer, model.get_input_embeddings())
    tower = ToyWorldTower.load(folder / "tower.safetensors", embeds, tokens_per_frame, device=device)
    return tower, "tw" + manifest["files"]["adapter.safetensors"][:12]


def attach_toyworld(model, tokenizer, spec) -> tuple:
    """`models.loading.AttachVision` for the embedded model: (tower, adapter id)."""
    from videokv.models.loading import resolve_device
    return load_toyworld(model, tokenizer, spec.tokens_per_frame, resolve_device(spec.device))



def count_calibration(tower_sha256: str, folder: Path | None = None) -> dict | None:
    """The span counter's thresholds for the dual-encoder oracle, from the weights' manifest
    ({"chunk", "frame"}), or None when none were measured. Thresholds measured on other tower
    weights (a retrain that kept the manifest's block) are still used, with a warning that
    says how to measure them again."""
    cal = read_manifest(folder).get("count_calibration")
    if not cal:
        return None
    measured = cal.get("measured_on", {}).get("tower.safetensors")
    if measured and measured != tower_sha256:
        log.warning("the span counter's thresholds were measured on tower %s, this tower is %s: run "
                    "`videokv bench counting --install` to measure them on these weights", measured[:12],
                    tower_sha256[:12])
    return {k: float(cal[k]) for k in ("chunk", "frame") if cal.get(k) is not None}
