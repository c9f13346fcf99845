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


class MRotary(Rotary):
    """M-RoPE of the Qwen2-VL family, over keys laid out like `Rotary`'s.

    Each rotary frequency pair j is driven by one of three position components (temporal,
    height, width), chosen by `mrope_section`; text tokens have all three equal. Pair j of a
    token at (t, h, w) turns by c_j * theta_j, where c_j is the component driving j. Shift all
    three components by the same s and every pair turns by (c_j + s) * theta_j: the extra turn
    is s * theta_j on *every* pair whatever drives it, i.e. R(s * theta), the ordinary 1-D
    rotation by s. So a uniform shift is a 1-D rotation and composes with the in-chunk layout:

        R_mrope(P + (t, h, w)) = R_1d(P) . R_mrope((t, h, w))

    which is why the store/re-rotate rule of 1-D models carries over exactly: keys cached at
    chunk base P plus their in-chunk (t, h, w) offsets are un-rotated by the scalar P only
    (`unrotate(keys, [P] * T)`), so each keeps its (t, h, w) offsets within its chunk, and are
    loaded at a new base P' by `rotate(keys, [P'] * T)`.

    positions given to `cos_sin`/`rotate`/`unrotate`: [T] (a 1-D position: all three
    components equal, i.e. a uniform shift) or [3, T] (explicit t, h, w components).
    """

    def __init__(self, rotary_emb: nn.Module, mrope_section: list[int]):
        super().__init__(rotary_emb)
        self.mrope_section = list(mrope_section)

    @torch.no_grad()
    def cos_sin(self, positions: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [T] or [3, T] int64 -> cos, sin: [T, head_dim] float32."""
        pos = positions.to(device=device, dtype=torch.long)
        if pos.dim() == 1:
            pos = pos.expand(3, -1)
        probe = torch.empty(0, device=device, dtype=torch.float32)
        cos, sin = self.emb(probe, pos[:, None, :])                     # position_ids [3, 1, T]
        if cos.dim() == 4:
            # transformers versions whose rotary module returns [3, 1, T, D] per component and
            # leave interleaving the sections to the attention: interleave them here.
            cos, sin = self._sections(cos), self._sections(sin)
        return cos[0].float(), sin[0].float()

    def _sections(self, x: torch.Tensor) -> torch.Tensor:
        """[3, 1, T, D] -> [1, T, D]: rotary dims of section i take component i % 3."""
        parts = x.split(self.mrope_section * 2, dim=-1)
        return torch.cat([p[i % 3] for i, p in enumerate(parts)], dim=-1)
