"""LanguageBind video as a relevance oracle (Video-X2L's choice): a chunk is one 8-frame clip
through LanguageBind's video tower, a question its text tower, in their joint space.

Install (optional extra; its declared requirement transformers<5 conflicts with ours, so the
package itself goes in without dependencies):

    pip install 'videokv[languagebind]'                 # einops, peft
    pip install --no-deps languagebind==0.1.0

What it takes to run PyPI languagebind 0.1.0 next to transformers 5, all done here:
- Its package `__init__` imports every modality's processing module (cv2, decord,
  pytorchvideo, torchaudio), which fail here: we register a bare `languagebind` package
  module and import only `video.configuration_video`, `video.modeling_video` and
  `video.tokenization_video` directly.
- The config needs `add_time_attn=True` (the video tower's temporal attention; without it
  the layers the weights belong to are not built) and `_attn_implementation="eager"` on the
  config and both sub-configs (transformers 5's CLIPAttention dispatches on it; unset, it is
  None).
- We build the model and load the state dict ourselves instead of `from_pretrained`:
  transformers 5 builds on the meta device and leaves the text tower's non-persistent
  `position_ids` buffer uninitialised (garbage token positions), and LoRA keys saved by older
  peft (`q_proj.weight`) must be mapped to today's (`q_proj.base_layer.weight`).
- Its video transform ends in RandomHorizontalFlipVideo(p=0.5); an oracle must embed a chunk
  the same way every time, so `video_clip` is that transform without the flip.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from videokv.errors import VideoKVError
from videokv.models.checkpoints import ModelIntegrityError

from .encoders import EncoderOracle

PIP = "languagebind==0.1.0"
INSTALL = f"pip install 'videokv[languagebind]' && pip install --no-deps {PIP}"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class LanguageBindNotInstalled(VideoKVError, ImportError):
    """languagebind (or its einops/peft) is missing: names the install commands."""

    code = "model_not_found"


def import_video_modules():
    """(configuration_video, modeling_video, tokenization_video) of the installed package,
    without running `languagebind/__init__.py`."""
    spec = importlib.util.find_spec("languagebind")
    if spec is None or not spec.submodule_search_locations:
        raise LanguageBindNotInstalled(f"the languagebind oracle needs {PIP}: run `{INSTALL}`")
    if "languagebind" not in sys.modules:
        pkg = types.ModuleType("languagebind")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        sys.modules["languagebind"] = pkg
    try:
        return tuple(importlib.import_module(f"languagebind.video.{m}")
                     for m in ("configuration_video", "modeling_video", "tokenization_video"))
    except ImportError as e:
        raise LanguageBindNotInstalled(f"languagebind's video modules failed to import ({e}): run `{INSTALL}`") from e


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All weights of a checkpoint folder: *.safetensors, else pytorch_model*.bin."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if files:
        return {k: v for f in files for k, v in load_file(f).items()}
    files = sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ModelIntegrityError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    return {k: v for f in files for k, v in torch.load(f, map_location="cpu", weights_only=True).items()}


def remap_peft_keys(state: dict[str, torch.Tensor], wanted) -> dict[str, torch.Tensor]:
    """Map keys saved by older peft (`x.q_proj.weight`, `x.q_proj.lora_A.weight`) onto the
    model's (`x.q_proj.base_layer.weight`, `x.q_proj.lora_A.default.weight`) where needed."""
    out = dict(state)
    for key in wanted:
        if key in out:
            continue
        for old in (key.replace(".base_layer.", "."), key.replace(".default.", ".")):
            if old != key and old in out:
                out[key] = out.pop(old)
                break
    return out


def load_languagebind_video(folder: Path, device: str = "cpu"):
    """(model, tokenizer) from a LanguageBind video checkpoint folder (config.json, weights,
    vocab.json + merges.txt)."""
    cfgm, modeling, tokm = import_video_modules()
    cfg = cfgm.LanguageBindVideoConfig.from_pretrained(folder)
    cfg.vision_config.add_time_attn = True
    for c in (cfg, cfg.vision_config, cfg.text_config):
        c._attn_implementation = "eager"
    model = modeling.LanguageBindVideo(cfg)
    wanted = model.state_dict().keys()
    state = remap_peft_keys(read_state_dict(folder), wanted)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # position_ids are buffers, persistent in some transformers versions and not in others
    # (so present in some checkpoints and not in others); they are reset below anyway.
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelIntegrityError(f"{folder}: not a LanguageBind video checkpoint this build can load: "
                                  f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
                                  f"{' ...' if len(missing) + len(unexpected) > 10 else ''}")
    for module in model.modules():    # see the module docstring: never trust these buffers
        ids = getattr(module, "position_ids", None)
        if isinstance(ids, torch.Tensor):
            ids.copy_(torch.arange(ids.shape[-1]).expand_as(ids))
    tok = tokm.LanguageBindVideoTokenizer.from_pretrained(folder)
    return model.to(device).eval(), tok


def video_clip(frames: torch.Tensor, num_frames: int = 8, size: int = 224) -> torch.Tensor:
    """One chunk's frames [N, 3, H, W] float in [0, 1] -> a clip [3, num_frames, size, size]:
    LanguageBind's video transform, minus its random flip. num_frames frames evenly spaced
    over the chunk (np.linspace, as its decord/opencv loaders pick them), normalised with
    OpenAI CLIP's mean/std, short side scaled to `size` (bilinear, as pytorchvideo's
    ShortSideScale), centre-cropped to size x size."""
    idx = np.linspace(0, len(frames) - 1, num_frames, dtype=int)
    x = frames[torch.as_tensor(idx)].float()
    mean = torch.tensor(OPENAI_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    h, w = x.shape[-2:]
    new = (size, int(math.floor(w / h * size))) if w >= h else (int(math.floor(h / w * size)), size)
    x = F.interpolate(x, size=new, mode="bilinear", align_corners=False)
    top, left = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    x = x[..., top:top + size, left:left + size]
    return x.permute(1, 0, 2, 3).contiguous()


@dataclass
class LanguageBindOracle(EncoderOracle):
    """LanguageBind video: chunk = its frames as one clip (`video_clip`: the checkpoint's
    num_frames, 8, at its image size, 224) through the video tower + projection; question =
    CLIP-tokenised text (77 tokens, padded as LanguageBind's processor does) through the
    text tower + projection."""

    name: str = "languagebind"
    # no model_type check: what a folder holds is checked weight by weight at load
    context_length: ClassVar[int] = 77

    def _load(self, folder: Path) -> None:
        self.model, self.tokenizer = load_languagebind_video(folder, self.device)
        vc = self.model.config.vision_config
        self.num_frames, self.size = vc.num_frames, vc.image_size

    def embed_chunk(self, frames: torch.Tensor) -> torch.Tensor:
        clip = video_clip(frames.to(self.device), self.num_frames, self.size)
        return self.model.get_image_features(pixel_values=clip[None])[0]

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), max_length=self.context_length, padding="max_length",
                             truncation=True, return_tensors="pt")
        return self.model.get_text_features(input_ids=enc["input_ids"].to(self.device),
                                            attention_mask=enc["attention_mask"].to(self.device))
