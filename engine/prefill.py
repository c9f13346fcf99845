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

import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from videokv.engine.backend import HFCausalBackend
from videokv.engine.chunkkv import ChunkKV, TokenKind
from videokv.engine.compress import make_policy
from videokv.engine.rope import MRotary
from videokv.engine.config import EngineConfig


@dataclass
class ChunkInput:
    """One chunk to prefill. visual: [frames * tokens_per_frame, hidden] vision-token embeddings."""

    index: int
    visual: torch.Tensor
    frame_start: int = 0
    frame_end: int = 0
    t_start: float = 0.0
    t_end: float = 0.0
    text: str = ""     # the chunk's text channel line (`text_line`), "" when none


@dataclass
class PrefilledChunk:
    """A chunk's KVs at each level. `full` is kept only when asked for (tests, window 'full')."""

    L: ChunkKV
    H: ChunkKV
    full: ChunkKV | None = None

    def level(self, name: str) -> ChunkKV:
        got = {"L": self.L, "H": self.H, "full": self.full}[name]
        if got is None:
            raise ValueError(f"chunk {self.L.index}: level {name!r} was not kept")
        return got


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


def attention_received(backend: HFCausalBackend, queries: torch.Tensor, keys_pre: torch.Tensor,
                       local: torch.Tensor | None = None) -> torch.Tensor:
    """Attention each chunk token receives from the chunk's own tokens (causal), summed over
    queries and over the query heads sharing a KV head.

    queries: [L, Hq, T, D] pre-RoPE; keys_pre: [L, Hkv, T, D] as stored -> [L, Hkv, T].
    local: the chunk's in-chunk positions ([T] or [3, T]; default 0..T-1). Both are rotated
    to the chunk's own frame (base 0): only relative positions matter here."""
    L, Hq, T, D = queries.shape
    Hkv = keys_pre.shape[1]
    local = torch.arange(T) if local is None else local
    k_pos = backend.store_positions(local, 0)   # stored keys still lack this much rotation
    out = torch.empty(L, Hkv, T, device=queries.device)
    causal = torch.ones(T, T, dtype=torch.bool, device=queries.device).tril()
    for layer in range(L):  # one layer at a time keeps the [Hq, T, T] scores small
        q = backend.rotary.rotate(queries[layer].float(), local)
        k = backend.rotary.rotate(keys_pre[layer].float(), k_pos).repeat_interleave(Hq // Hkv, dim=0)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        p = s.masked_fill(~causal, float("-inf")).softmax(-1)          # [Hq, T(query), T(key)]
        out[layer] = p.sum(1).view(Hkv, Hq // Hkv, T).sum(1)
    return out


class ChunkPrefiller:
    """Runs chunk-based prefill for one video and yields each chunk's L-KV and H-KV."""

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
                                         chunk.frame_end - chunk.frame_start)

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

        device_path: keep context and compression on the backend's device (`run_on_device`);
        default: on CUDA only. The chunks yielded are the same either way (host tensors)."""
        if device_path if device_path is not None else self.backend.device.type == "cuda":
            yield from self.run_on_device(prefix, chunks, history, keep_full)
            return
        keep_for_ctx = "full" in self.levels_needed
        maxlen = None if self.window < 0 else self.window
        hist: deque[PrefilledChunk] = deque(history, maxlen=maxlen)  # maxlen keeps the last `window`
        for chunk in chunks:
            done = self.step(prefix, list(hist), chunk, keep_full=keep_full or keep_for_ctx)
            hist.append(done if keep_for_ctx else PrefilledChunk(done.L, done.H))
            yield done

    # -- the GPU fast path ----------------------------------------------------------------
    def _to_host(self, done: PrefilledChunk, keep_full: bool):
        """(the chunk's levels as host ChunkKVs, event to wait for before reading them). On
        CUDA the copies go into pinned memory on a side stream, overlapping the next chunk."""
        levels = [done.L, done.H] + ([done.full] if keep_full and done.full is not None else [])
        if self.backend.device.type != "cuda":
            host = [c.to("cpu") for c in levels]
            return PrefilledChunk(host[0], host[1], host[2] if len(host) > 2 else None), None
        if getattr(self, "_d2h", None) is None:
            self._d2h = torch.cuda.Stream(self.backend.device)
        side = self._d2h
        side.wait_stream(torch.cuda.current_stream(self.backend.device))
        host = []
        with torch.cuda.stream(side):
            for c in levels:
                k = torch.empty(c.keys.shape, dtype=c.keys.dtype, pin_memory=True)
                v = torch.empty(c.values.shape, dtype=c.values.dtype, pin_memory=True)
                k.copy_(c.keys, non_blocking=True)
                v.copy_(c.values, non_blocking=True)
                c.keys.record_stream(side)
                c.values.record_stream(side)
                host.append(replace(c, keys=k, values=v, kinds=c.kinds.cpu()))
            ev = torch.cuda.Event()
            ev.record(side)
        return PrefilledChunk(host[0], host[1], host[2] if len(host) > 2 else None), ev

    # Tokens per packed forward when chunks are independent (window 0) on the device path.
    PACK_TOKENS = 8192

    def _packable(self) -> bool:
        """Chunks can share one forward when none attends to another (window 0) and the
        backend lays tokens out one position each with the base decoder (not M-RoPE)."""
        be = self.backend
        return (self.window == 0 and type(be)._run_decoder is HFCausalBackend._run_decoder
                and not isinstance(be.rotary, MRotary))

    @torch.no_grad()
    def _packed_on_device(self, prefix: ChunkKV, chunks: Iterable[ChunkInput], keep_full: bool):
        """Window 0: chunks attend to the prefix and themselves only, so up to PACK_TOKENS of
        them run as one forward with a block-diagonal causal mask, each at P + its in-chunk
        positions exactly as alone. Yields device PrefilledChunks in order."""
        be = self.backend
        ctx_pos, P = be.part_positions([prefix])
        k_ctx = be.rotary.rotate(prefix.keys.to(be.device, be.dtype), ctx_pos)
        v_ctx = prefix.values.to(be.device, be.dtype)
        need_att = self.l_policy.needs_attention or self.h_policy.needs_attention

        def forward(group):
            made = [self.chunk_embeds(c) for c in group]
            sizes = [e.shape[0] for e, _, _ in made]
            T = sum(sizes)
            mask = torch.zeros(T, P + T, dtype=torch.bool, device=be.device)
            mask[:, :P] = True
            off = 0
            for s in sizes:
                mask[off:off + s, P + off:P + off + s] = torch.ones(s, s, dtype=torch.bool, device=be.device).tril()
                off += s
            out = be.forward(torch.cat([e for e, _, _ in made]), be.make_cache(k_ctx, v_ctx),
                             positions=torch.cat([P + loc for _, _, loc in made]), logits=False,
                             queries=need_att, mask=mask[None, None])
            off = 0
            for c, s, (_, kinds, local) in zip(group, sizes, made):
                keys = be.rotary.unrotate(out.keys[:, :, off:off + s], be.store_positions(local, P))
                values = out.values[:, :, off:off + s]
                full = ChunkKV(keys, values, kinds.to(keys.device), index=c.index, frame_start=c.frame_start,
                               frame_end=c.frame_end, t_start=c.t_start, t_end=c.t_end, level="full",
                               fingerprint=self.fingerprint)
                att = attention_received(be, out.queries[:, :, off:off + s], keys, local) if need_att else None
                yield PrefilledChunk(L=self.l_policy.compress(full, "L", att), H=self.h_policy.compress(full, "H", att),
                                     full=full if keep_full else None)
                off += s

        group, n = [], 0
        for c in chunks:
            t = c.visual.shape[0] + 16                        # + its timestamp text (a bound)
            if group and n + t > self.PACK_TOKENS:
                yield from forward(group)
                group, n = [], 0
            group.append(c)
            n += t
        if group:
            yield from forward(group)

    def run_on_device(self, prefix: ChunkKV, chunks: Iterable[ChunkInput], history: Sequence[PrefilledChunk] = (),
                      keep_full: bool = False, pack: bool | None = None) -> Iterator[PrefilledChunk]:
        """`run` for the GPU: the prefix and the window's history stay on the device (no
        host->device copy of context per chunk), each chunk is compressed on the device and only
        its L/H go to the host, asynchronously, so a chunk is yielded once the next one has been
        queued. With window 0 (`pack`, default when `_packable`) several chunks share one
        forward. Yields host PrefilledChunks equal to `run`'s (bit for bit on the CPU unpacked;
        packed, to matmul rounding)."""
        be = self.backend
        dev = be.device
        keep_for_ctx = "full" in self.levels_needed
        keep = keep_full or keep_for_ctx
        maxlen = None if self.window < 0 else self.window

        def on_dev(h: PrefilledChunk) -> PrefilledChunk:
            return PrefilledChunk(h.L.to(dev), h.H.to(dev), h.full.to(dev) if h.full is not None else None)

        prefix_d = prefix.to(dev)

        def device_chunks():
            if self._packable() if pack is None else pack:
                yield from self._packed_on_device(prefix_d, chunks, keep)
                return
            hist: deque[PrefilledChunk] = deque((on_dev(h) for h in history), maxlen=maxlen)
            for chunk in chunks:
                done = self.step(prefix_d, list(hist), chunk, keep_full=keep, on_device=True)
                hist.append(done if keep_for_ctx else PrefilledChunk(done.L, done.H))
                yield done

        pending = None
        for done in device_chunks():
            nxt = self._to_host(done, keep)
            del done
            if pending is not None:
                if pending[1] is not None:
                    pending[1].synchronize()
                yield pending[0]
            pending = nxt
        if pending is not None:
            if pending[1] is not None:
                pending[1].synchronize()
            yield pending[0]
