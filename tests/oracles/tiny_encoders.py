"""Tiny random CLIP, SigLIP and LanguageBind-video checkpoints of the real classes, written to
a folder as the real checkpoints are (config, weights, image processor, tokenizer files)."""

import io
import json
from pathlib import Path

import torch

from videokv.models.checkpoints import quiet_progress

# CLIP's byte-level BPE vocabulary with no merges: 256 byte symbols, the same with </w>, then
# the two specials (so <|endoftext|> has the highest id, as in CLIP: its text tower pools there).
BOS, EOS = 512, 513


def clip_tokenizer_files(folder: Path, tokenizer_class: str) -> None:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": tokenizer_class, "model_max_length": 77, "bos_token": "<|startoftext|>",
         "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))


def _clip_text(**kw) -> dict:
    return dict(vocab_size=514, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS, **kw)


def _vision(**kw) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                patch_size=8, **kw)


def save_tiny_clip(folder: Path, seed: int = 0):
    """A tiny CLIPModel checkpoint; returns the in-memory model that was saved."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=_clip_text(), vision_config=_vision(), projection_dim=16)).eval()
    with quiet_progress():
        model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    clip_tokenizer_files(folder, "CLIPTokenizer")
    return model


def save_tiny_siglip(folder: Path, seed: int = 0):
    """A tiny SiglipModel checkpoint with a real SiglipTokenizer (a small sentencepiece model
    trained here); returns the in-memory model that was saved."""
    import sentencepiece as spm
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    text = ["what digit was shown on the red card", "a blue star moves to the left", "the green circle",
            "how many squares appeared before the yellow triangle"] * 10
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buf, vocab_size=40,
                                   hard_vocab_limit=False, num_threads=1, minloglevel=2)
    (folder / "spiece.model").write_bytes(buf.getvalue())
    tok = SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=16)
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = SiglipConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=16, bos_token_id=None,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
                       vision_config=_vision())
    model = SiglipModel(cfg).eval()
    with quiet_progress():
        model.save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model


def save_tiny_languagebind(folder: Path, seed: int = 0, config_time_attn: bool = False):
    """A tiny LanguageBindVideo (8 frames, LoRA r=2 on the temporal attention, as the released
    video models) saved with save_pretrained. config_time_attn: the add_time_attn written to
    config.json (the weights always hold the temporal layers; the loader must turn it on).
    Returns the in-memory model that was saved."""
    from videokv.oracles.languagebind import import_video_modules

    cfgm, modeling, _ = import_video_modules()
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = cfgm.LanguageBindVideoConfig(text_config=_clip_text(), projection_dim=16,
                                       vision_config=_vision(num_frames=8, add_time_attn=True, lora_r=2))
    for c in (cfg, cfg.vision_config, cfg.text_config):
        c._attn_implementation = "eager"
    model = modeling.LanguageBindVideo(cfg).eval()
    with quiet_progress():
        model.save_pretrained(folder)
    conf = json.loads((folder / "config.json").read_text())
    conf["vision_config"]["add_time_attn"] = config_time_attn
    (folder / "config.json").write_text(json.dumps(conf, indent=1))
    clip_tokenizer_files(folder, "LanguageBindVideoTokenizer")
    return model
