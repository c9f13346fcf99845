"""The vision tower interface: frames -> token embeddings in the LLM's input space.

Concrete towers live with their models: `models.patch.PatchTower` (untrained, any text
LLM), `models.qwen_vl.QwenVisionTower` (a Qwen-VL checkpoint's own) and the toy world's
trained tower (`toyworld.tower`), which plugs in through this interface.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn


class VisionTower(nn.Module):
    """forward(frames [N, 3, H, W] float in [0, 1]) -> [N, tokens_per_frame, hidden].

    tokens_per_frame: visual tokens per frame; input_size: (W, H) frames should be resized to;
    identity: a string naming the weights (part of the model fingerprint).
    frames_independent: each frame is seen on its own, so frames of several chunks may share
        one call (the GPU path batches them); False for towers that patch frames in time.
    """

    tokens_per_frame: int
    hidden_size: int
    input_size: tuple[int, int]
    identity: str
    frames_independent: ClassVar[bool] = False
