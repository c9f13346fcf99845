"""Chunk-based prefill (training-free form of Video-XL-2's).

Each chunk is `"Time {t}s:"` text tokens + the visual tokens of its frames (the backend's
`chunk_tokens` lays it out). It attends to the prompt prefix, a window of earlier chunks'
stored KVs (H-KV by default) and itself. Everything in context is re-rotated to contiguous
positions from 0 (`backend.part_positions`) and the chunk runs right after them, at P plus
its in-chunk positions, exactly as it will at decode time; its keys are then un-rotated by
`backend.store_positions` and stored. The window is bounded, so memory is constant in the
number of chunks and cost is linear.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence

import torch

from .backend import HFCausalBackend
from .chunkkv import ChunkInput, ChunkKV, PrefilledChunk, TokenKind  # noqa: F401 (re-exported)
from .compress import attention_received, make_policy
from .config import EngineConfig


def timestamp_text(t: float) -> str:
    return f"Time {t:.1f}s:"


# The text channel's sources, in the order they appear in a chunk's line.
TEXT_LABELS = {"ocr": "Screen", "asr": "Speech", "subtitle": "Subtitles"}


def text_line(parts: dict[str, str]) -> str:
    """A chunk's text channel as one line: {"ocr": "GOAL MARTINEZ", "asr": "what a goal"} ->
    'Screen: "GOAL MARTINEZ". Speech: "what a goal".' (sources without text are left out).
    Quoted, so the model can tell where read or heard text starts and ends."""
    return " ".join(f'{label}: "{parts[src].strip()}".' for src, label in TEXT_LABELS.items()
                    if parts.get(src, "").strip())


def chunk_stamp(t: float, text: str = "") -> str:
    """The text a chunk starts with: its timestamp, then its text channel line (if any).
    All of it is TEXT tokens, so it stays dense in both L-KV and H-KV."""
    return timestamp_text(t) + (" " + text if text else "")


def concat_kv(parts: Sequence[ChunkKV]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-RoPE keys, values [L, H, sum(tokens), D] of the parts in order."""
    return torch.cat([p.keys for p in parts], dim=2), torch.cat([p.values for p in parts], dim=2)


class ChunkPrefiller:
    """Runs chunk-based prefill for one video and yields each chunk's L-KV and H-KV.

    pack_tokens: on the device path with window 0, chunks share one forward up to this many
    tokens (prefill_device.py)."""

    pack_tokens = 8192

    def __init__(self, backend: HFCausalBackend, config: EngineConfig, fingerprint: str | None = None):
        self.backend = backend
        self.config = config
        self.fingerprint = fingerprint or config.fingerprint()
        self.l_policy = make_policy(config.l_kv)
        self.h_policy = make_policy(config.h_kv)
        self.window = config.prefill.window
        self.levels_needed = {config.prefill.window_level, config.prefill.prev_level or config.prefill.window_level}

    # -- inputs ---------------------------------------------------------------------------
    def prefix_embeds(self, question: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt prefix (system prompt, opening of the user turn): (embeds [T, hidden], ids [T])."""
        before, _ = self.backend.prompt_parts(self.config.system_prompt, question)
        ids = self.backend.tokenize(before)
        return self.backend.embed_text(ids), ids

    def chunk_embeds(self, chunk: ChunkInput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embeds [T, hidden], kinds [T], in-chunk positions [T] or [3, T]): the timestamp
        text and the visual tokens, laid out by the backend."""
        return self.backend.chunk_tokens(chunk_stamp(chunk.t_start, chunk.text), chunk.visual,
                                         chunk.frame_end - chunk.frame_start, chunk.t_end - chunk.t_start)

    # -- prefill --------------------------------------------------------------------------
    @torch.no_grad()
    def prefix(self) -> ChunkKV:
        """The prompt prefix's pre-RoPE KV (index -1), computed at positions 0..P-1."""
        embeds, ids = self.prefix_embeds()
        local = self.backend.text_positions(len(ids))
        out = self.backend.forward(embeds, positions=local, logits=False)
        keys = self.backend.rotary.unrotate(out.keys, self.backend.store_positions(local, 0))
        kinds = torch.full((len(ids),), TokenKind.TEXT, dtype=torch.uint8)
        return ChunkKV(keys.cpu(), out.values.cpu(), kinds, index=-1, level="full", fingerprint=self.fingerprint)

    def _context(self, prefix: ChunkKV, history: Sequence[PrefilledChunk]) -> list[ChunkKV]:
        p = self.config.prefill
        ctx = [prefix]
        for i, h in enumerate(history):
            last = i == len(history) - 1
            ctx.append(h.level(p.prev_level if (last and p.prev_level) else p.window_level))
        return ctx

    @torch.no_grad()
    def step(self, prefix: ChunkKV, history: Sequence[PrefilledChunk], chunk: ChunkInput,
             keep_full: bool = False, on_device: bool = False) -> PrefilledChunk:
        """Prefill one chunk on top of prefix + history (already trimmed to the window).

        on_device: leave the result where it was computed (the GPU path: prefix and history
        are already there, and the caller moves L/H to the host asynchronously)."""
        be = self.backend
        ctx = self._context(prefix, history)
        k_pre, v = concat_kv(ctx)
        ctx_pos, P = be.part_positions(ctx)          # context from 0; the chunk starts at P
        cache = be.make_cache(be.rotary.rotate(k_pre.to(be.device, be.dtype), ctx_pos), v.to(be.device, be.dtype))
        del k_pre, v
        embeds, kinds, local = self.chunk_embeds(chunk)
        need_att = self.l_policy.needs_attention or self.h_policy.needs_attention
        out = be.forward(embeds, cache, positions=P + local, logits=False, queries=need_att)
        del cache
        keys = be.rotary.unrotate(out.keys, be.store_positions(local, P))
        values = out.values
        att = attention_received(be, out.queries, keys, local) if need_att else None
        if on_device:
            kinds = kinds.to(keys.device)
        else:
            keys, values = keys.cpu(), values.cpu()
            att = att.cpu() if att is not None else None
        full = ChunkKV(keys, values, kinds, index=chunk.index, frame_start=chunk.frame_start,
                       frame_end=chunk.frame_end, t_start=chunk.t_start, t_end=chunk.t_end,
                       level="full", fingerprint=self.fingerprint)
        return PrefilledChunk(L=self.l_policy.compress(full, "L", att), H=self.h_policy.compress(full, "H", att),
                              full=full if keep_full else None)

    def run(self, prefix: ChunkKV, chunks: Iterable[ChunkInput], history: Sequence[PrefilledChunk] = (),
            keep_full: bool = False, device_path: bool | None = None) -> Iterator[PrefilledChunk]:
        """Yield each chunk's PrefilledChunk in order. `history`: already-stored earlier chunks
        (for resuming; only the last `window` are used). Memory is bounded by the window.

        device_path: keep context and compression on the backend's device (prefill_device.py);
        default: on CUDA only. The chunks yielded are the same either way (host tensors)."""
        if device_path if device_path is not None else self.backend.device.type == "cuda":
            from .prefill_device import DevicePrefill
            yield from DevicePrefill(self, self.pack_tokens).run(prefix, chunks, history, keep_full)
            return
        keep_for_ctx = "full" in self.levels_needed
        maxlen = None if self.window < 0 else self.window
        hist: deque[PrefilledChunk] = deque(history, maxlen=maxlen)  # maxlen keeps the last `window`
        for chunk in chunks:
            done = self.step(prefix, list(hist), chunk, keep_full=keep_full or keep_for_ctx)
            hist.append(done if keep_for_ctx else PrefilledChunk(done.L, done.H))
            yield done
