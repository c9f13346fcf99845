"""Vision towers: frames -> token embeddings in the LLM's input space.

Any `VisionTower` works with the engine. Until the toy-world tower is trained (its own
issue), the embedded default uses `PatchTower`, a fixed random projection of patch
colours: deterministic, honest about seeing little, and enough to exercise the pipeline.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


class VisionTower(nn.Module):
    """Base: forward(frames [N, 3, H, W] float in [0, 1]) -> [N, tokens_per_frame, hidden].

    tokens_per_frame: visual tokens per frame; input_size: (W, H) frames should be resized to;
    identity: a string naming the weights (part of the model fingerprint).
    """

    tokens_per_frame: int
    hidden_size: int
    input_size: tuple[int, int]
    identity: str


class PatchTower(VisionTower):
    """Untrained: a grid of per-patch colour statistics, projected by a seeded random matrix."""

    def __init__(self, hidden_size: int, tokens_per_frame: int = 16, input_size=(128, 96),
                 seed: int = 0, scale: float = 1.0):
        super().__init__()
        rows = next(r for r in range(math.isqrt(tokens_per_frame), 0, -1) if tokens_per_frame % r == 0)
        self.grid = (rows, tokens_per_frame // rows)
        self.tokens_per_frame = tokens_per_frame
        self.hidden_size = hidden_size
        self.input_size = tuple(input_size)
        g = torch.Generator().manual_seed(seed)
        # mean and std of RGB per patch -> 6 features, plus a learned-free position code.
        self.register_buffer("proj", torch.randn(6, hidden_size, generator=g) * scale / math.sqrt(6))
        self.register_buffer("pos", torch.randn(tokens_per_frame, hidden_size, generator=g) * scale * 0.1)
        self.identity = f"patch-untrained-v0-h{hidden_size}-t{tokens_per_frame}-s{seed}-x{scale:g}"

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float()
        mean = F.adaptive_avg_pool2d(x, self.grid)                       # [N, 3, g, g]
        sq = F.adaptive_avg_pool2d(x * x, self.grid)
        std = (sq - mean * mean).clamp_min(0).sqrt()
        feats = torch.cat([mean, std], 1).flatten(2).transpose(1, 2)     # [N, g*g, 6]
        return (feats - 0.5) @ self.proj + self.pos
