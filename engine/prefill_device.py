"""Chunk-based prefill's device path (the GPU): the same chunks as `ChunkPrefiller.run`, with
the prefix and the window's history kept on the device, each chunk compressed there and only
its L/H copied to the host, asynchronously (pinned memory, a side stream), so a chunk is
yielded once the next one has been queued. With window 0 (no chunk attends to another)
several chunks share one forward under a block-diagonal causal mask.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

import torch

from .backend import HFCausalBackend
from .chunkkv import ChunkInput, ChunkKV, PrefilledChunk
from .compress import attention_received
from .rope import MRotary


class DevicePrefill:
    """prefiller: the ChunkPrefiller whose config, policies and step this runs;
    pack_tokens: tokens per packed forward (window 0)."""

    def __init__(self, prefiller, pack_tokens: int = 8192):
        self.pre = prefiller
        self.pack_tokens = pack_tokens
        self._d2h = None

    def _to_host(self, done: PrefilledChunk, keep_full: bool):
        """(the chunk's levels as host ChunkKVs, event to wait for before reading them). On
        CUDA the copies go into pinned memory on a side stream, overlapping the next chunk."""
        levels = [done.L, done.H] + ([done.full] if keep_full and done.full is not None else [])
        if self.pre.backend.device.type != "cuda":
            host = [c.to("cpu") for c in levels]
            return PrefilledChunk(host[0], host[1], host[2] if len(host) > 2 else None), None
        if self._d2h is None:
            self._d2h = torch.cuda.Stream(self.pre.backend.device)
        side = self._d2h
        side.wait_stream(torch.cuda.current_stream(self.pre.backend.device))
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

    def packable(self) -> bool:
        """Chunks can share one forward when none attends to another (window 0) and the
        backend lays tokens out one position each with the base decoder (not M-RoPE)."""
        be = self.pre.backend
        return (self.pre.window == 0 and type(be)._run_decoder is HFCausalBackend._run_decoder
                and not isinstance(be.rotary, MRotary))

    @torch.no_grad()
    def _packed_on_device(self, prefix: ChunkKV, chunks: Iterable[ChunkInput], keep_full: bool):
        """Window 0: chunks attend to the prefix and themselves only, so up to PACK_TOKENS of
        them run as one forward with a block-diagonal causal mask, each at P + its in-chunk
        positions exactly as alone. Yields device PrefilledChunks in order."""
        be = self.pre.backend
        ctx_pos, P = be.part_positions([prefix])
        k_ctx = be.rotary.rotate(prefix.keys.to(be.device, be.dtype), ctx_pos)
        v_ctx = prefix.values.to(be.device, be.dtype)
        need_att = self.pre.l_policy.needs_attention or self.pre.h_policy.needs_attention

        def forward(group):
            made = [self.pre.chunk_embeds(c) for c in group]
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
                               fingerprint=self.pre.fingerprint)
                att = attention_received(be, out.queries[:, :, off:off + s], keys, local) if need_att else None
                yield PrefilledChunk(L=self.pre.l_policy.compress(full, "L", att), H=self.pre.h_policy.compress(full, "H", att),
                                     full=full if keep_full else None)
                off += s

        group, n = [], 0
        for c in chunks:
            t = c.visual.shape[0] + 16                        # + its timestamp text (a bound)
            if group and n + t > self.pack_tokens:
                yield from forward(group)
                group, n = [], 0
            group.append(c)
            n += t
        if group:
            yield from forward(group)

    def run(self, prefix: ChunkKV, chunks: Iterable[ChunkInput], history: Sequence[PrefilledChunk] = (),
            keep_full: bool = False, pack: bool | None = None) -> Iterator[PrefilledChunk]:
        """`ChunkPrefiller.run` for the GPU: the prefix and the window's history stay on the device (no
        host->device copy of context per chunk), each chunk is compressed on the device and only
        its L/H go to the host, asynchronously, so a chunk is yielded once the next one has been
        queued. With window 0 (`pack`, default when `_packable`) several chunks share one
        forward. Yields host PrefilledChunks equal to `run`'s (bit for bit on the CPU unpacked;
        packed, to matmul rounding)."""
        be = self.pre.backend
        dev = be.device
        keep_for_ctx = "full" in self.pre.levels_needed
        keep = keep_full or keep_for_ctx
        maxlen = None if self.pre.window < 0 else self.pre.window

        def on_dev(h: PrefilledChunk) -> PrefilledChunk:
            return PrefilledChunk(h.L.to(dev), h.H.to(dev), h.full.to(dev) if h.full is not None else None)

        prefix_d = prefix.to(dev)

        def device_chunks():
            if self.packable() if pack is None else pack:
                yield from self._packed_on_device(prefix_d, chunks, keep)
                return
            hist: deque[PrefilledChunk] = deque((on_dev(h) for h in history), maxlen=maxlen)
            for chunk in chunks:
                done = self.pre.step(prefix_d, list(hist), chunk, keep_full=keep, on_device=True)
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
