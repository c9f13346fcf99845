"""RoPE on stored keys: un-rotate captured keys, rotate stored keys to new positions.

Uses the model's own rotary module, so default, llama3 and yarn rope types (inv_freq and
attention scaling) come from the model, not from a copy of its math here.

HF applies  k_rot = k * cos_s + rotate_half(k) * sin_s  with cos_s = s*cos, sin_s = s*sin
(s = attention_scaling, 1.0 except for yarn/longrope). That is s * R(theta) k, so the inverse is
R(-theta) k_rot / s = (k_rot * cos_s - rotate_half(k_rot) * sin_s) / s**2.
"""

from __future__ import annotations

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rotary:
    """Rotation of keys laid out [layers, kv_heads, tokens, head_dim] (or [..., tokens, head_dim]).

    rotary_emb: the model's rotary module: forward(x, position_ids [1, T]) -> cos, sin [1, T, head_dim].
    """

    def __init__(self, rotary_emb: nn.Module):
        self.emb = rotary_emb
        self.scaling = float(getattr(rotary_emb, "attention_scaling", 1.0))

    @torch.no_grad()
    def cos_sin(self, positions: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [T] int64 -> cos, sin: [T, head_dim] in float32 (scaled by attention_scaling)."""
        pos = positions.to(device=device, dtype=torch.long)[None]
        probe = torch.empty(0, device=device, dtype=torch.float32)
        cos, sin = self.emb(probe, pos)
        return cos[0].float(), sin[0].float()

    def rotate(self, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Pre-RoPE keys [..., T, D] -> keys as the model would cache them at `positions` [T]."""
        cos, sin = self.cos_sin(positions, keys.device)
        k = keys.float()
        return (k * cos + rotate_half(k) * sin).to(keys.dtype)

    def unrotate(self, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Keys cached at `positions` [T] -> pre-RoPE keys [..., T, D] (exact inverse of rotate)."""
        cos, sin = self.cos_sin(positions, keys.device)
        k = keys.float()
        return ((k * cos - rotate_half(k) * sin) / (self.scaling ** 2)).to(keys.dtype)
