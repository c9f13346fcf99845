"""The backend interface for a video-language model, and its HF causal-LM implementation.

A backend gives: vision tokens for frames, text embeddings, one forward over input
embeddings on top of a past cache (returning the new tokens' K,V), the rotary module,
and the chat template split around the video. Generation lives in engine.decode.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from .chunkkv import ChunkKV, TokenKind
from .rope import Rotary
from .vision import VisionTower

VIDEO_MARK = "\x00VIDEO\x00"


@dataclass
class ForwardOut:
    """logits: [T, vocab] or None; keys, values: [layers, kv_heads, T, head_dim] of the new
    tokens, rotated at their positions (None with kv=False); queries: [layers, q_heads, T,
    head_dim] pre-RoPE, or None."""

    logits: torch.Tensor | None
    keys: torch.Tensor | None
    values: torch.Tensor | None
    queries: torch.Tensor | None
    cache: DynamicCache


class HFCausalBackend:
    """Any llama-style `transformers` causal LM (SmolLM2, Llama, Qwen2, Mistral) plus a VisionTower.

    model: an `*ForCausalLM` with `.model.layers[i].self_attn.q_proj` and `.model.rotary_emb`.
    vision: maps frames [N, 3, H, W] in [0, 1] to [N, tokens_per_frame, hidden]; may be None
        for text-only use (tests then feed visual embeddings directly).

    Positions (subclasses with another layout, e.g. M-RoPE, override the four hooks
    `chunk_tokens`, `store_positions`, `rope_offsets`, `extent`): a part (the prompt prefix or
    a chunk) is stored with its keys un-rotated by `store_positions` (here: fully, to
    pre-RoPE), and when parts are loaded they are laid out contiguously, each starting where
    the previous one's `extent` ends (here: one position per stored token).
    """

    name = "hf-causal"

    def __init__(self, model: nn.Module, tokenizer, vision: VisionTower | None = None, weights_id: str = ""):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.vision = vision
        self.weights_id = weights_id
        self.decoder, self.lm_head, cfg = self._parts(model)
        self.config = cfg
        self.num_layers = cfg.num_hidden_layers
        self.num_q_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.hidden_size = cfg.hidden_size
        self.rotary = self._make_rotary()
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.vision_calls = 0  # counted so callers can prove a path ran no video prefill

    def _parts(self, model: nn.Module):
        """(decoder stack, lm_head, text config) of the wrapped model."""
        return model.model, model.lm_head, model.config

    def _make_rotary(self) -> Rotary:
        return Rotary(self.decoder.rotary_emb)

    # -- inputs ---------------------------------------------------------------------------
    @torch.no_grad()
    def vision_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: [N, 3, H, W] float in [0, 1] -> [N, tokens_per_frame, hidden]."""
        if self.vision is None:
            raise RuntimeError("this backend has no vision tower")
        self.vision_calls += 1
        return self.vision(frames.to(self.device)).to(self.dtype)

    def tokenize(self, text: str) -> torch.Tensor:
        """text -> ids [T] (no special tokens added: the chat template holds them as text)."""
        return torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)

    @torch.no_grad()
    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] -> [T, hidden]."""
        return self.model.get_input_embeddings()(ids.to(self.device))

    def prompt_parts(self, system: str, question: str) -> tuple[str, str]:
        """Chat template split around the video: (text before the video, text after it).
        The video sits at the start of the user turn; the question follows it."""
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": VIDEO_MARK + question}]
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        before, after = text.split(VIDEO_MARK)
        return before, after

    # -- positions ------------------------------------------------------------------------
    def text_positions(self, n: int) -> torch.Tensor:
        """In-part positions [n] of n text tokens."""
        return torch.arange(n)

    def chunk_tokens(self, stamp: str, visual: torch.Tensor, n_frames: int, seconds: float | None = None):
        """A chunk's inputs: (embeds [T, hidden], kinds [T] uint8, in-chunk positions [T]).
        Layout: the timestamp text, then the visual tokens [n_visual, hidden]. n_frames,
        seconds: its sampled frames and its span (a backend with time-aware positions uses them)."""
        ids = self.tokenize(stamp)
        text = self.embed_text(ids)
        vis = visual.to(device=text.device, dtype=text.dtype)
        kinds = torch.cat([torch.full((len(ids),), TokenKind.TEXT, dtype=torch.uint8),
                           torch.full((vis.shape[0],), TokenKind.VISUAL, dtype=torch.uint8)])
        return torch.cat([text, vis]), kinds, torch.arange(len(ids) + vis.shape[0])

    def store_positions(self, local: torch.Tensor, base: int) -> torch.Tensor:
        """1-D positions [T] to un-rotate a part's cached keys by, when it ran at `base` +
        `local` ([T] in-part positions). Here: all of it, so stored keys are pre-RoPE."""
        return base + local

    def rope_offsets(self, part: ChunkKV) -> torch.Tensor:
        """1-D positions [tokens], relative to the part's base, to rotate stored keys at.
        Compression re-lays tokens out densely, so a stored token's offset is its index."""
        return torch.arange(part.tokens)

    def extent(self, part: ChunkKV) -> int:
        """Positions a stored part occupies when loaded: one per token."""
        return part.tokens

    def extent_of(self, index: int, tokens: int, text_rows: int, n_frames: int, seconds: float) -> int:
        """`extent` of a part from its counts, without its tensors (a context budget is
        planned from chunk records): here its tokens."""
        return tokens

    def part_positions(self, parts) -> tuple[torch.Tensor, int]:
        """(1-D positions [sum of tokens] to rotate the parts' stored keys at, next free
        position): parts laid out contiguously in the order given, from 0."""
        out, base = [], 0
        for p in parts:
            out.append(base + self.rope_offsets(p))
            base += self.extent(p)
        return (torch.cat(out) if out else torch.zeros(0, dtype=torch.long)), base

    # -- forward --------------------------------------------------------------------------
    def make_cache(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None) -> DynamicCache:
        """A cache holding rotated keys/values [layers, kv_heads, P, head_dim] (or empty)."""
        cache = DynamicCache(config=self.config)
        if keys is not None and keys.shape[2] > 0:
            for i in range(self.num_layers):
                cache.update(keys[i][None], values[i][None], i)
        return cache

    @torch.no_grad()
    def forward(self, embeds: torch.Tensor, cache: DynamicCache | None = None, *,
                positions: torch.Tensor | None = None,
                logits: bool | str = True, queries: bool = False, kv: bool = True,
                mask: torch.Tensor | None = None) -> ForwardOut:
        """embeds [T, hidden] continue `cache`, at absolute `positions` ([T]; default
        P..P+T-1, P = cache length). kv=False skips gathering the new tokens' K,V (decoding
        only needs the grown cache). mask: a custom bool attention mask [1, 1, T, P + T]
        (True = attend), e.g. several chunks packed into one forward; default causal.
        logits: True -> [T, vocab]; "last" -> [1, vocab] for the last token only (generation
        needs no more, and the vocabulary projection of a long question is not free)."""
        cache = cache if cache is not None else self.make_cache()
        past = cache.get_seq_length()
        T = embeds.shape[0]
        if positions is None:
            positions = torch.arange(past, past + T)
        with self._capture_queries(queries) as captured:
            extra = {} if mask is None else {"mask": mask}
            out = self._run_decoder(embeds[None].to(self.dtype), cache, positions.to(self.device), past, **extra)
        cache = out.past_key_values
        keys = values = None
        if kv:
            keys = torch.stack([layer.keys[0, :, past:] for layer in cache.layers])
            values = torch.stack([layer.values[0, :, past:] for layer in cache.layers])
        q = None
        if queries:
            q = torch.stack([c.view(T, self.num_q_heads, self.head_dim).transpose(0, 1) for c in captured])
        hidden = out.last_hidden_state[0]
        lg = self.lm_head(hidden[-1:] if logits == "last" else hidden).float() if logits else None
        return ForwardOut(lg, keys, values, q, cache)

    def _run_decoder(self, embeds: torch.Tensor, cache: DynamicCache, positions: torch.Tensor, past: int,
                     mask: torch.Tensor | None = None):
        """One decoder pass: embeds [1, T, hidden] at positions [T] on top of `cache`."""
        cache_pos = torch.arange(past, past + embeds.shape[1], device=self.device)
        extra = {} if mask is None else {"attention_mask": mask}
        return self.decoder(inputs_embeds=embeds, past_key_values=cache, position_ids=positions[None],
                            cache_position=cache_pos, use_cache=True, **extra)

    @contextmanager
    def _capture_queries(self, enabled: bool):
        """Pre-RoPE query projections per layer, [T, q_heads*head_dim] each (for attention scores)."""
        captured: list[torch.Tensor] = []
        hooks = []
        if enabled:
            for layer in self.decoder.layers:
                hooks.append(layer.self_attn.q_proj.register_forward_hook(
                    lambda _m, _i, out: captured.append(out[0])))
        try:
            yield captured
        finally:
            for h in hooks:
                h.remove()

    @property
    def eos_token_ids(self) -> set[int]:
        ids = self.config.eos_token_id
        ids = set(ids if isinstance(ids, (list, tuple)) else [ids]) - {None}
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids
