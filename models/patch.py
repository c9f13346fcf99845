"""`PatchTower`: an untrained vision tower for text LLMs without a trained one
(`VIDEOKV_VISION=patch`): a grid of per-patch colour statistics through a seeded random
projection. Deterministic and honest about seeing little: it exercises the pipeline."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from videokv.engine.vision import VisionTower


class PatchTower(VisionTower):
    """frames [N, 3, H, W] in [0, 1] -> [N, tokens_per_frame, hidden_size]."""

    frames_independent = True

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
