"""Relevance oracles from pretrained dual encoders: CLIP and SigLIP (native `transformers`
classes) here, LanguageBind video in engine/languagebind.py.

kvpress style: the base `EncoderOracle` holds the mechanics (checkpoint folder, identity,
normalisation, batching); a model brings two methods over documented shapes,

    embed_chunk(frames [N, 3, H, W] float in [0, 1]) -> [dim]     one chunk's frames
    embed_texts(texts: list[str])                    -> [B, dim]  questions

and image-text models only `embed_frames(frames [n, 3, H, W]) -> [n, dim]`: `FramePoolOracle`
pools a chunk as the mean of its frames' unit vectors. The base L2-normalises the results,
so FAISS inner product is cosine similarity in the encoder's joint space.

Select one with VIDEOKV_ORACLE=clip:PATH, siglip:PATH or languagebind:PATH (local folders;
nothing is downloaded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from videokv.engine.chunkkv import ChunkKV
from videokv.models.checkpoints import UnsupportedModelError, checkpoint_id, quiet_progress, require_checkpoint

from .base import RelevanceOracle


def to_uint8_images(frames: torch.Tensor) -> list:
    """frames [N, 3, H, W] float in [0, 1] -> N uint8 HWC arrays, the pixels ingest decoded
    (it divided them by 255), for the checkpoint's own image processor."""
    x = (frames.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8)
    return list(x.permute(0, 2, 3, 1).numpy())


def pooled(out) -> torch.Tensor:
    """get_*_features output -> [B, dim]: transformers 5 returns a BaseModelOutputWithPooling
    (the projected embedding in pooler_output), earlier versions a tensor."""
    return out if torch.is_tensor(out) else out.pooler_output


@dataclass
class EncoderOracle(RelevanceOracle):
    """Base: load `path` (a checkpoint folder) in `_load`, embed with `embed_chunk` /
    `embed_texts`. identity = name + the checkpoint's weights id."""

    path: str = ""
    device: str = "cpu"
    batch: int = 32                      # frames per vision forward
    name: str = "encoder"
    model_types: ClassVar[tuple[str, ...]] = ()   # config.json model_type(s) this class loads
    needs_frames: ClassVar[bool] = True
    _weights: str = field(default="", repr=False)
    _dim: int = field(default=0, repr=False)

    def __post_init__(self):
        folder = require_checkpoint(self.path, "VIDEOKV_ORACLE", f"{self.name} checkpoint folder")
        mt = json.loads((folder / "config.json").read_text()).get("model_type")
        if self.model_types and mt not in self.model_types:
            raise UnsupportedModelError(f"VIDEOKV_ORACLE={self.name}:{self.path}: model_type {mt!r} is not a "
                                        f"{self.name} checkpoint (expected {', '.join(self.model_types)})")
        with quiet_progress():
            self._load(folder)
        self._weights = checkpoint_id(folder)
        with torch.no_grad():      # the joint space's width, whatever the config calls it
            self._dim = int(self.embed_texts(["dimension probe"]).shape[-1])

    def _load(self, folder: Path) -> None:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def identity(self) -> str:
        return f"{self.name}-{self._weights}"

    def embed_chunk(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [N, 3, H, W] float in [0, 1] -> [dim]."""
        raise NotImplementedError

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """texts -> [B, dim]."""
        raise NotImplementedError

    @torch.no_grad()
    def _chunk_frames(self, chunk: ChunkKV, frames: torch.Tensor) -> torch.Tensor:
        if len(frames) == 0:
            raise ValueError(f"chunk {chunk.index} has no frames to embed")
        return self.embed_chunk(frames).float().cpu()

    @torch.no_grad()
    def _question(self, question: str) -> torch.Tensor:
        return self.embed_texts([question])[0].float().cpu()


@dataclass
class FramePoolOracle(EncoderOracle):
    """Image-text encoders: every frame embedded on its own, a chunk = the mean of its
    frames' unit vectors (then normalised by the base)."""

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [n, 3, H, W] float in [0, 1] -> [n, dim]."""
        raise NotImplementedError

    def embed_chunk(self, frames: torch.Tensor) -> torch.Tensor:
        vecs = torch.cat([self.embed_frames(frames[i:i + self.batch]).float()
                          for i in range(0, len(frames), self.batch)])
        return torch.nn.functional.normalize(vecs, dim=-1).mean(0)


@dataclass
class CLIPOracle(FramePoolOracle):
    """CLIP (`CLIPModel`): the checkpoint's image processor and tokenizer, projected image and
    text embeddings (`get_image_features` / `get_text_features`)."""

    name: str = "clip"
    model_types: ClassVar[tuple[str, ...]] = ("clip",)

    def _load(self, folder: Path) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer

        self.model = self._model_class().from_pretrained(folder, dtype=torch.float32, local_files_only=True)
        self.model = self.model.to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.max_text = self.model.config.text_config.max_position_embeddings

    def _model_class(self):
        from transformers import CLIPModel
        return CLIPModel

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        pixels = self.processor(images=to_uint8_images(frames), return_tensors="pt")["pixel_values"]
        return pooled(self.model.get_image_features(pixel_values=pixels.to(self.device)))

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_text, padding=True,
                             return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        return pooled(self.model.get_text_features(**enc))


@dataclass
class SigLIPOracle(CLIPOracle):
    """SigLIP (`SiglipModel`). Its text tower pools the last position and was trained on
    text padded to max length (64), so questions are padded the same way."""

    name: str = "siglip"
    model_types: ClassVar[tuple[str, ...]] = ("siglip",)

    def _model_class(self):
        from transformers import SiglipModel
        return SiglipModel

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_text, padding="max_length",
                             return_tensors="pt")
        # as the reference SigLIP: padded to max length, no attention mask (it pools the last position)
        return pooled(self.model.get_text_features(input_ids=enc["input_ids"].to(self.device)))
