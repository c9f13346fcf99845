"""Tiny random Qwen2-VL / Qwen2.5-VL checkpoints of the real `transformers` classes, saved to a
folder the way a real checkpoint is laid out (config.json, model.safetensors, tokenizer,
preprocessor_config.json) so they load through `engine.models.load_backend` like real weights.

The tokenizer is the embedded model's (ChatML, like Qwen's) plus Qwen's vision special tokens;
the chat template is Qwen2-VL's. Frames are 84x56 with 14 px patches: 2x3 merged tokens per
2 frames, and two Qwen2.5-VL attention windows (2x2 merged tokens each) per frame.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoints import quiet_progress
from .qwen_vl import CHAT_TEMPLATE, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

KINDS = ("qwen2_vl", "qwen2_5_vl")
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>"]
FRAME_SIZE = (84, 56)          # (W, H)


def _text_config(tokenizer) -> dict:
    # head_dim 16 -> 8 rotary frequency pairs, split 2/3/3 over (t, h, w)
    return dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                tie_word_embeddings=True, initializer_range=0.1, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def tiny_config(kind: str, tokenizer):
    """A tiny config of the real class; special token ids from `tokenizer` (with VISION_TOKENS)."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    common = dict(vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                  video_token_id=ids["<|video_pad|>"], image_token_id=ids["<|image_pad|>"],
                  tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id)
    text = _text_config(tokenizer)
    if kind == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, in_channels=3,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    if kind == "qwen2_5_vl":
        # window 56 px = 2x2 merged tokens: a frame spans several windows; block 1 is global
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                      tokens_per_second=2, window_size=56, fullatt_block_indexes=[1])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    raise ValueError(f"unknown tiny VL kind {kind!r}; known: {KINDS}")


def save_tiny_qwen_vl(folder: Path, kind: str, base_tokenizer, seed: int = 0) -> Path:
    """Write a tiny random checkpoint of `kind` to `folder` (created); returns the folder."""
    import transformers
    from transformers import AutoTokenizer

    from .qwen_vl import QWEN_VL_TYPES

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base_tokenizer.save_pretrained(folder)            # a private copy: the caller's stays untouched
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cls = getattr(transformers, QWEN_VL_TYPES[kind][0])
    model = cls._from_config(tiny_config(kind, tok), dtype=torch.float32)
    with quiet_progress():
        model.save_pretrained(folder)
    # The preprocessor config as Qwen2-VL checkpoints ship it.
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
        "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280, "patch_size": 14, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD)}, indent=1))
    return folder


def tiny_qwen_vl_backend(folder: Path, kind: str, base_tokenizer, seed: int = 0, sample_fps: float = 1.0):
    """Save a tiny checkpoint to `folder` and load it back through the real loader."""
    from .loading import ModelSpec, load_backend

    save_tiny_qwen_vl(folder, kind, base_tokenizer, seed)
    return load_backend(ModelSpec(model=str(folder), device="cpu", frame_wh=FRAME_SIZE, sample_fps=sample_fps))
