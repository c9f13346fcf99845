"""Qwen2-VL and Qwen2.5-VL backends: the native `transformers` classes, run chunk by chunk.

Per chunk: the chunk's frames go through the model's own video preprocessing (frames ->
2x2x2 patches, `QwenPatcher`) and vision tower + merger (`QwenVisionTower`) to merged visual
tokens; the chunk is then laid out as the model's chat template lays out a video,

    "Time 12.0s:" <|vision_start|> [T x H x W merged visual tokens] <|vision_end|>

with M-RoPE positions per chunk (`QwenVLBackend.chunk_tokens`): text tokens 0..n-1 (all three
components equal), visual token (t, h, w) at n + (t * interval, h, w), and <|vision_end|> at
one past the largest visual component, as the released models place text after a video.
A chunk's keys are un-rotated only by its base position (a uniform shift of all three
components is a 1-D rotation, see `rope.MRotary`), so they keep their (t, h, w) offsets
within the chunk; loaded chunks are laid out one after another, each occupying its extent.

Nothing is fetched: checkpoints are local folders (`load_qwen_vl`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from videokv.engine.backend import VIDEO_MARK, HFCausalBackend
from videokv.engine.chunkkv import ChunkKV, TokenKind
from videokv.engine.rope import MRotary
from videokv.engine.vision import VisionTower

from .checkpoints import tokenizer_identity

# model_type in config.json -> (transformers class, backend name)
QWEN_VL_TYPES = {
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "qwen2-vl"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "qwen2.5-vl"),
}
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_FRAME_SIZE = (448, 252)        # (W, H): 16 x 9 merged tokens per 2 frames
VIDEO_BLOCK = "<|vision_start|><|video_pad|><|vision_end|>"

# The Qwen2-VL / Qwen2.5-VL instruct chat template, used when a checkpoint has none of its own
# (tokenizer_config.json, chat_template.jinja or chat_template.json).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The Qwen2-VL processors' size rule: both sides multiples of `factor` (patch x merge),
    total pixels within [min_pixels, max_pixels], aspect ratio kept as well as possible."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


@dataclass(frozen=True)
class QwenPatcher:
    """The Qwen2-VL video processor's frames -> patches step, from the checkpoint's
    preprocessor config: resize to `size` (H, W) (bicubic; a no-op when frames are sampled
    at that size, as ingest does), normalise, repeat the last frame up to a multiple of
    temporal_patch_size, and flatten into the processor's patch order
    (t, h-block, w-block, h-in-block, w-in-block, channel, temporal, patch row, patch col)."""

    patch_size: int
    temporal_patch_size: int
    merge_size: int
    size: tuple[int, int]
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD

    def grid(self, n_frames: int) -> tuple[int, int, int]:
        """(T, Gh, Gw): temporal and spatial patch grid of n_frames frames."""
        return (-(-n_frames // self.temporal_patch_size), self.size[0] // self.patch_size,
                self.size[1] // self.patch_size)

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """frames [N, 3, H, W] float in [0, 1] -> (pixels [T*Gh*Gw, 3*tp*p*p] float32, grid)."""
        x = frames.float()
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        tp, p, m = self.temporal_patch_size, self.patch_size, self.merge_size
        if pad := -x.shape[0] % tp:
            x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
        T, gh, gw = self.grid(x.shape[0])
        x = x.view(T, tp, 3, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return x.reshape(T * gh * gw, 3 * tp * p * p), (T, gh, gw)


class QwenVisionTower(VisionTower):
    """The model's vision transformer + patch merger behind `QwenPatcher`.

    forward(frames [N, 3, H, W] in [0, 1]) -> [T * H/(p*m) * W/(p*m), hidden]: the merged
    visual tokens of the chunk's frames as one video (T = N / temporal_patch_size, rounded up).
    """

    def __init__(self, visual: nn.Module, patcher: QwenPatcher, identity: str):
        super().__init__()
        self.visual = visual
        self.patcher = patcher
        m = patcher.merge_size
        self.merged_hw = (patcher.size[0] // patcher.patch_size // m, patcher.size[1] // patcher.patch_size // m)
        self.input_size = (patcher.size[1], patcher.size[0])
        # per frame on average (a temporal patch covers temporal_patch_size frames)
        self.tokens_per_frame = max(1, self.merged_hw[0] * self.merged_hw[1] // patcher.temporal_patch_size)
        self.identity = identity

    def merged_grid(self, n_frames: int) -> tuple[int, int, int]:
        """(T, Hm, Wm) of the merged visual tokens of n_frames frames."""
        return (self.patcher.grid(n_frames)[0], *self.merged_hw)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        param = next(self.visual.parameters())
        pixels, grid = self.patcher(frames.to(param.device))
        out = self.visual(pixels.to(param.dtype), grid_thw=torch.tensor([grid], device=param.device))
        # transformers 5 returns the merged tokens as pooler_output; earlier versions a tensor
        return out if torch.is_tensor(out) else out.pooler_output


def video_positions(grid: tuple[int, int, int], interval: float) -> torch.Tensor:
    """In-video M-RoPE offsets [3, T*Hm*Wm] of merged tokens in (t, h, w) raster order:
    (floor(t * interval), h, w). interval: temporal position step per temporal patch."""
    T, H, W = grid
    t = (torch.arange(T, dtype=torch.float64) * interval).long()
    tt, hh, ww = torch.meshgrid(t, torch.arange(H), torch.arange(W), indexing="ij")
    return torch.stack([tt.flatten(), hh.flatten(), ww.flatten()])


def mrope_layout(segments) -> torch.Tensor:
    """M-RoPE positions [3, L] of a whole token sequence, the released models' rule: text
    continues one past the previous position; a video block starts at the current position
    and the text after it one past its largest component. segments: ("text", n) or
    ("video", (T, Hm, Wm), interval), in order. Used as the one-pass reference."""
    out, cur = [], 0
    for seg in segments:
        if seg[0] == "text":
            out.append(torch.arange(cur, cur + seg[1]).expand(3, -1))
            cur += seg[1]
        else:
            vid = cur + video_positions(seg[1], seg[2])
            out.append(vid)
            cur = int(vid.max()) + 1
    return torch.cat(out, dim=1)


class QwenVLBackend(HFCausalBackend):
    """A Qwen2-VL / Qwen2.5-VL `*ForConditionalGeneration` with its own vision tower.

    model: the native class; vision: its `QwenVisionTower`; sample_fps: frames per second of
    the sampled video (Qwen2.5-VL spaces temporal positions by seconds); chat_template: the
    checkpoint's template (None: `CHAT_TEMPLATE`).
    """

    def __init__(self, model: nn.Module, tokenizer, vision: QwenVisionTower, weights_id: str = "",
                 sample_fps: float = 1.0, chat_template: str | None = None):
        super().__init__(model, tokenizer, vision=vision, weights_id=weights_id)
        top = model.config
        self.model_type = top.model_type
        self.name = QWEN_VL_TYPES[self.model_type][1]
        self.vision_start_id, self.vision_end_id = top.vision_start_token_id, top.vision_end_token_id
        self.video_token_id = top.video_token_id
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE
        # Qwen2.5-VL: temporal position step = tokens_per_second x seconds per temporal patch
        # (Qwen2-VL: one position per temporal patch). time_interval is the step at the
        # configured rate; a chunk's own step follows its real sampling (`interval`).
        self.tokens_per_second = float(top.vision_config.tokens_per_second) if self.model_type == "qwen2_5_vl" \
            else None
        self.time_interval = self.interval(1, 1.0 / sample_fps)

    def interval(self, n_frames: int, seconds: float | None) -> float:
        """The temporal position step per temporal patch of a chunk of n_frames sampled frames
        spanning `seconds` (its real timestamps: t_end - t_start): Qwen2.5-VL spaces patches by
        their time, so a chunk sampled below the configured rate (a frame cap, a source
        slower than the sampling) gets the wider step it really has; None: the configured rate."""
        if self.tokens_per_second is None:
            return 1.0
        if seconds is None or seconds <= 0 or n_frames <= 0:
            return self.time_interval
        return self.tokens_per_second * self.vision.patcher.temporal_patch_size * seconds / n_frames

    def _parts(self, model: nn.Module):
        return model.model.language_model, model.lm_head, model.config.get_text_config()

    def _make_rotary(self) -> MRotary:
        emb = self.decoder.rotary_emb
        rope = getattr(self.config, "rope_parameters", None) or getattr(self.config, "rope_scaling", None) or {}
        return MRotary(emb, getattr(emb, "mrope_section", None) or rope["mrope_section"])

    def prompt_parts(self, system: str, question: str) -> tuple[str, str]:
        """The checkpoint's chat template split around its video block; each chunk brings
        its own <|vision_start|> ... <|vision_end|>."""
        msgs = [{"role": "system", "content": system},
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": VIDEO_MARK + question}]}]
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                                  chat_template=self.chat_template)
        before, after = text.split(VIDEO_MARK)
        if not before.endswith(VIDEO_BLOCK):
            raise ValueError("the chat template does not render a video as " + VIDEO_BLOCK)
        return before[: -len(VIDEO_BLOCK)], after

    # -- positions (see rope.MRotary) -------------------------------------------------------
    def _video_extent(self, n_frames: int, interval: float) -> tuple[tuple[int, int, int], int]:
        grid = self.vision.merged_grid(n_frames)
        T, H, W = grid
        return grid, max(int((T - 1) * interval), H - 1, W - 1) + 1

    def chunk_tokens(self, stamp: str, visual: torch.Tensor, n_frames: int, seconds: float | None = None):
        """(embeds [T, hidden], kinds [T], in-chunk M-RoPE positions [3, T]) of
        stamp + <|vision_start|> + visual [n_visual, hidden] + <|vision_end|>; seconds: the
        chunk's span (temporal positions follow it, `interval`)."""
        interval = self.interval(n_frames, seconds)
        grid, vid_extent = self._video_extent(n_frames, interval)
        if visual.shape[0] != grid[0] * grid[1] * grid[2]:
            raise ValueError(f"{n_frames} frames make {grid[0]}x{grid[1]}x{grid[2]} visual tokens, "
                             f"got {visual.shape[0]}")
        pre = torch.cat([self.tokenize(stamp), torch.tensor([self.vision_start_id])])
        n = len(pre)
        text = self.embed_text(torch.cat([pre, torch.tensor([self.vision_end_id])]))
        vis = visual.to(device=text.device, dtype=text.dtype)
        embeds = torch.cat([text[:n], vis, text[n:]])
        kinds = torch.full((embeds.shape[0],), TokenKind.VISUAL, dtype=torch.uint8)
        kinds[:n] = kinds[-1] = TokenKind.TEXT
        local = torch.cat([torch.arange(n).expand(3, -1), n + video_positions(grid, interval),
                           torch.full((3, 1), n + vid_extent)], dim=1)
        return embeds, kinds, local

    def store_positions(self, local: torch.Tensor, base: int) -> torch.Tensor:
        """Only the uniform shift `base` is taken out: the (t, h, w) offsets stay in the keys."""
        return torch.full((local.shape[-1],), base, dtype=torch.long)

    def rope_offsets(self, part: ChunkKV) -> torch.Tensor:
        return torch.zeros(part.tokens, dtype=torch.long)

    def extent(self, part: ChunkKV) -> int:
        """Text parts: one position per token. A chunk: its text before the video, the video's
        extent, and <|vision_end|> (whatever compression kept, the layout is the frames')."""
        return self.extent_of(part.index, part.tokens, int(part.text_mask.sum()), part.frame_end - part.frame_start,
                              part.t_end - part.t_start)

    def extent_of(self, index: int, tokens: int, text_rows: int, n_frames: int, seconds: float) -> int:
        """`extent` from a part's counts (as a chunk record has them): its text rows before
        the video less <|vision_start|>, the video's extent, <|vision_end|>."""
        if index < 0 or n_frames <= 0:
            return tokens
        return text_rows - 1 + self._video_extent(n_frames, self.interval(n_frames, seconds))[1] + 1

    def _run_decoder(self, embeds: torch.Tensor, cache, positions: torch.Tensor, past: int):
        pos = positions.expand(3, -1) if positions.dim() == 1 else positions
        return self.decoder(inputs_embeds=embeds, past_key_values=cache, position_ids=pos[:, None, :],
                            use_cache=True)

    @property
    def eos_token_ids(self) -> set[int]:
        ids = super().eos_token_ids
        gen = getattr(self.model, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None) if gen is not None else None
        ids |= set(extra if isinstance(extra, (list, tuple)) else [extra]) - {None}
        return ids


def read_preprocessor(folder: Path) -> dict:
    """The checkpoint's video (else image) preprocessor config, {} if it has none."""
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if (folder / name).is_file():
            return json.loads((folder / name).read_text())
    return {}


def read_chat_template(folder: Path, tokenizer) -> str | None:
    """tokenizer_config's template, else chat_template.jinja / chat_template.json."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text()).get("chat_template")
    return None


def make_patcher(vision_cfg, pre: dict, frame_size: tuple[int, int] | None) -> QwenPatcher:
    """Patch geometry from the vision config (what the weights need), mean/std and pixel
    bounds from the preprocessor config; frame_size (W, H) is snapped by `smart_resize`."""
    size = pre.get("size") or {}
    min_px = pre.get("min_pixels") or size.get("shortest_edge") or 56 * 56
    max_px = pre.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280
    p, m = vision_cfg.patch_size, vision_cfg.spatial_merge_size
    w, h = frame_size or DEFAULT_FRAME_SIZE
    return QwenPatcher(p, vision_cfg.temporal_patch_size, m, smart_resize(h, w, p * m, min_px, max_px),
                       tuple(pre.get("image_mean", OPENAI_CLIP_MEAN)), tuple(pre.get("image_std", OPENAI_CLIP_STD)))


def load_qwen_vl(folder: Path, model_type: str, weights_id: str, dtype: torch.dtype = torch.float32,
                 device: str = "cpu", frame_size: tuple[int, int] | None = None,
                 sample_fps: float = 1.0) -> QwenVLBackend:
    """A `QwenVLBackend` from a local checkpoint folder (config.json, safetensors weights,
    tokenizer, preprocessor config). Never downloads."""
    import transformers
    from transformers import AutoTokenizer

    cls = getattr(transformers, QWEN_VL_TYPES[model_type][0])
    model = cls.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    model = model.to(device=device, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    patcher = make_patcher(model.config.vision_config, read_preprocessor(folder), frame_size)
    ident = (f"{QWEN_VL_TYPES[model_type][1]}-{patcher.size[1]}x{patcher.size[0]}-p{patcher.patch_size}"
             f"t{patcher.temporal_patch_size}m{patcher.merge_size}-"
             + "-".join(f"{v:.4f}" for v in patcher.mean + patcher.std))
    vision = QwenVisionTower(model.model.visual, patcher, ident)
    template = read_chat_template(folder, tok)
    return QwenVLBackend(model, tok, vision, weights_id=f"{weights_id}-tok{tokenizer_identity(tok, template)}",
                         sample_fps=sample_fps, chat_template=template)
