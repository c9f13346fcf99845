"""The GPU fast path for paging: stored KVs -> pinned host memory -> device, rotated on the way.

Used by `QueryEngine` only when the backend runs on CUDA; the CPU path (`KVPager` +
`engine.decode.assemble`) is unchanged. Per question:

  1. the video's hot set (prompt prefix + every chunk's H-KV, or every group's gist G when
     the layout uses it; `hotset.py`) lives in pinned host memory, one buffer [layers, 2,
     kv_heads, tokens, head_dim] per video and level; its host-to-device copy is issued
     first, on a side stream, in a few layer groups;
  2. meanwhile the CPU reads the layout's other parts (the L-KVs; with a G hot set also the
     H-KVs) out of LMDB's map into a pinned staging buffer that is reused across questions
     (grown, never shrunk; the next question waits for the previous one's copy out of it
     before writing), and issues their copy;
  3. on the compute stream, group by group as each copy lands, one fused gather + rotate
     (`gather_rotate`, torch.compile'd on CUDA) writes keys rotated to their contiguous
     positions, and values, straight into the assembled [layers, kv_heads, N, head_dim]
     cache: no host-side concatenation, no second pass over the bytes.

Copies overlap rotation (side stream + per-group events) and the L reads overlap the H copy.
The same code runs on the CPU with pinning and streams off (pin=False, device="cpu"); there it
produces exactly the cache `assemble(backend, KVPager.load(...).parts)` does (tests check it
bit for bit), which is how it is tested without a GPU.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from videokv.engine.decode import AssembledCache
from videokv.engine.rope import rotate_half

from .budget import Layout
from .hotset import HotSetCache, as_part, part_rows, stored_bytes, text_chunks_of
from .pager import base_level


def gather_rotate(src_k: torch.Tensor, src_v: torch.Tensor, idx: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, out_k: torch.Tensor, out_v: torch.Tensor, dst: torch.Tensor) -> None:
    """out_k[:, :, dst] = rotate(src_k[:, :, idx]) at the positions of cos/sin; out_v[:, :, dst] =
    src_v[:, :, idx]. src_*: [layers, kv_heads, T, D] pre-RoPE; idx, dst: [n] token rows;
    cos, sin: [n, D] float32. The same arithmetic as `Rotary.rotate` (in float32, cast to the
    output dtype), so on the CPU the result equals the CPU path's bit for bit."""
    k = src_k.index_select(2, idx).to(out_k.dtype).float()
    out_k.index_copy_(2, dst, (k * cos + rotate_half(k) * sin).to(out_k.dtype))
    out_v.index_copy_(2, dst, src_v.index_select(2, idx).to(out_v.dtype))


class FusedGatherRotate:
    """`gather_rotate` compiled by torch.compile (fused kernels on CUDA; dynamic shapes, so a
    new context length does not recompile). torch.compile is lazy: if the first call fails
    (no compiler, unsupported build) this falls back to the eager function for good and says
    why in `error`. The first call compiles (seconds): warm it up before timing."""

    def __init__(self):
        self.compiled = None
        self.ok: bool | None = None
        self.error = ""

    @property
    def kind(self) -> str:
        return {True: "torch.compile", False: "eager (compile failed)", None: "not run yet"}[self.ok]

    def __call__(self, *args) -> None:
        if self.ok is None:
            try:
                self.compiled = torch.compile(gather_rotate, dynamic=True)
                self.compiled(*args)
                self.ok = True
                return
            except Exception as e:  # noqa: BLE001 - the eager version is still correct
                self.ok, self.error = False, f"{type(e).__name__}: {e}"[:500]
        (self.compiled if self.ok else gather_rotate)(*args)


class StagingBuffer:
    """A host buffer reused across questions: `take(shape, dtype)` returns a view of its first
    bytes, growing it (geometrically, pinned when `pin`) only when a question needs more.
    `grows` counts allocations, `reuses` the takes served without one."""

    def __init__(self, pin: bool = False):
        self.pin = pin
        self._buf: torch.Tensor | None = None
        self.grows = 0
        self.reuses = 0

    @property
    def nbytes(self) -> int:
        return 0 if self._buf is None else self._buf.numel()

    def data_ptr(self) -> int:
        return 0 if self._buf is None else self._buf.data_ptr()

    def take(self, shape, dtype: torch.dtype) -> torch.Tensor:
        n = int(np.prod(shape)) * dtype.itemsize
        if self._buf is None or self._buf.numel() < n:
            size = max(n, 2 * self.nbytes, 1 << 20)
            self._buf = None                      # free the old one first
            self._buf = torch.empty(size, dtype=torch.uint8, pin_memory=self.pin)
            self.grows += 1
        else:
            self.reuses += 1
        return self._buf[:n].view(dtype).view(*shape)


@dataclass
class DevicePaged:
    """cache: the assembled cache on the device (keys rotated); bytes_in_context: KV bytes of
    every part in it; bytes_read: bytes read from the store for this question."""

    cache: AssembledCache
    bytes_in_context: int
    bytes_read: int
    layout: Layout


class DevicePager:
    """Pages a question's KVs onto `device` (default: the backend's) and assembles them there.

    pin / streams default to on for CUDA and off elsewhere; groups: layer groups the copy is
    split into (each group's rotation starts as soon as its bytes are on the device)."""

    def __init__(self, hot: HotSetCache, backend, device=None, pin: bool | None = None, groups: int = 4,
                 compile: bool | None = None):
        self.hot, self.backend = hot, backend
        self.store, self.fingerprint = hot.store, hot.fingerprint
        self.device = torch.device(device if device is not None else backend.device)
        self.cuda = self.device.type == "cuda"
        self.pin = self.cuda if pin is None else pin
        self.groups = max(1, groups)
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.staging = StagingBuffer(self.pin)
        self._staging_free = None            # event: the last copy out of the staging buffer is done
        self._fn = FusedGatherRotate() if (self.cuda if compile is None else compile) else gather_rotate
        self._lock = threading.Lock()

    def evict(self, video_id: str) -> None:
        self.hot.evict(video_id)

    # ------------------------------------------------------------------ paging
    def _groups(self, layers: int) -> list[tuple[int, int]]:
        g = min(self.groups, layers)
        cuts = [round(j * layers / g) for j in range(g + 1)]
        return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]

    def _copy(self, dst: torch.Tensor, src: torch.Tensor, groups) -> list:
        """Copy src -> dst group by group (on the side stream on CUDA); one event per group."""
        events = []
        if not self.cuda:
            for a, b in groups:
                dst[a:b].copy_(src[a:b])
                events.append(None)
            return events
        with torch.cuda.stream(self.copy_stream):
            for a, b in groups:
                dst[a:b].copy_(src[a:b], non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(self.copy_stream)
                events.append(ev)
        return events

    @torch.no_grad()
    def load(self, video_id: str, layout: Layout) -> DevicePaged:
        """The layout's parts assembled on the device (work may still be in flight on the
        current stream: whatever runs next on it sees the finished cache)."""
        with self._lock:
            return self._load(video_id, layout)

    def _stage(self, video_id: str, wanted: list[tuple[int, str]]) -> tuple[torch.Tensor | None, dict, dict, int]:
        """Read the parts not in the hot set out of the map into the reused staging buffer:
        (staging [layers, 2, kv_heads, T, head_dim] or None, {(index, level): ChunkKV view},
        {(index, level): first row}, bytes read: as stored)."""
        if not wanted:
            return None, {}, {}, 0
        if self._staging_free is not None:
            self._staging_free.synchronize()      # the previous question's copy out of it is done
        parts, offsets = {}, {}
        with self.store.reader() as r:
            text_chunks = text_chunks_of(r.video(video_id))
            views = [part_rows(r, video_id, i, lvl, self.fingerprint, self.hot.h_text, text_chunks)
                     for i, lvl in wanted]
            h0 = views[0][0].header
            total = sum(v.header.tokens if rows is None else len(rows) for v, rows in views)
            stage = self.staging.take((h0.layers, 2, h0.kv_heads, total, h0.head_dim), h0.dtype)
            off, stored = 0, 0
            for key, (v, rows) in zip(wanted, views):
                n = v.header.tokens if rows is None else len(rows)
                kinds = v.kinds if rows is None else v.kinds[rows]
                dst = v.take_into(stage[:, :, :, off:off + n], rows)     # dequantized on the way (codecs)
                stored += stored_bytes(v, rows)
                parts[key] = as_part(r, video_id, key[0], key[1], dst, kinds.clone(), r.video(video_id).fingerprint)
                offsets[key] = off
                off += n
        return stage, parts, offsets, stored

    def _load(self, video_id: str, layout: Layout) -> DevicePaged:
        be, dev = self.backend, self.device
        dtype = be.dtype
        base = base_level(layout)
        hot, read = self.hot.get(video_id, base)
        layers = hot.kv.shape[0]
        groups = self._groups(layers)
        cur = torch.cuda.current_stream(dev) if self.cuda else None
        if self.cuda:
            self.copy_stream.wait_stream(cur)    # device buffers below are allocated on `cur`

        # 1. the hot set's copy goes first ...
        dev_hot = torch.empty(hot.kv.shape, dtype=hot.kv.dtype, device=dev) if self.cuda else hot.kv
        hot_events = self._copy(dev_hot, hot.kv, groups) if self.cuda else [None] * len(groups)

        # 2. ... while the CPU reads the other parts out of the map into the staging buffer
        stage, staged, staged_off, stored = self._stage(video_id, [p for p in layout.parts if p[1] != base])
        dev_s, s_events = None, [None] * len(groups)
        read += stored
        if stage is not None:
            if self.cuda:
                dev_s = torch.empty(stage.shape, dtype=stage.dtype, device=dev)
                s_events = self._copy(dev_s, stage, groups)
                self._staging_free = torch.cuda.Event()
                self._staging_free.record(self.copy_stream)
            else:
                dev_s = stage

        # 3. positions and the gather plan: which row of which source lands where
        parts = [hot.parts[0]] + [hot.parts[hot.position(i)] if lvl == base else staged[(i, lvl)]
                                  for i, lvl in layout.parts]
        pos, next_pos = be.part_positions(parts)
        spans, start = [], 0
        src_h, dst_h, src_s, dst_s = [], [], [], []
        for j, p in enumerate(parts):
            t = p.tokens
            spans.append((p.index, start, start + t))
            key = layout.parts[j - 1] if j else None
            if key is not None and key in staged:
                src_s.append(np.arange(staged_off[key], staged_off[key] + t))
                dst_s.append(np.arange(start, start + t))
            else:
                first = hot.offsets[0 if key is None else hot.position(key[0])]
                src_h.append(np.arange(first, first + t))
                dst_h.append(np.arange(start, start + t))
            start += t
        N = start
        plan = [torch.from_numpy(np.concatenate(x) if x else np.zeros(0, np.int64)).long()
                for x in (src_h, dst_h, src_s, dst_s)]
        if self.cuda:
            plan = [x.pin_memory().to(dev, non_blocking=True) for x in plan]
        src_h, dst_h, src_s, dst_s = plan
        cos, sin = be.rotary.cos_sin(pos, dev)
        cos_h, sin_h = cos.index_select(0, dst_h), sin.index_select(0, dst_h)
        cos_s, sin_s = cos.index_select(0, dst_s), sin.index_select(0, dst_s)

        # 4. per layer group, as its bytes land: gather + rotate into the assembled cache
        kvh, D = hot.kv.shape[2], hot.kv.shape[4]
        out_k = torch.empty(layers, kvh, N, D, dtype=dtype, device=dev)
        out_v = torch.empty(layers, kvh, N, D, dtype=dtype, device=dev)
        for (a, b), ev_h, ev_s in zip(groups, hot_events, s_events):
            if ev_h is not None:
                cur.wait_event(ev_h)
            self._fn(dev_hot[a:b, 0], dev_hot[a:b, 1], src_h, cos_h, sin_h, out_k[a:b], out_v[a:b], dst_h)
            if dev_s is not None:
                if ev_s is not None:
                    cur.wait_event(ev_s)
                self._fn(dev_s[a:b, 0], dev_s[a:b, 1], src_s, cos_s, sin_s, out_k[a:b], out_v[a:b], dst_s)
        cache = AssembledCache(out_k, out_v, spans, next_pos)
        return DevicePaged(cache, sum(p.nbytes for p in parts), read, layout)


def h2d_bandwidth(nbytes: int = 256 << 20, repeat: int = 10, device: str = "cuda") -> dict:
    """Raw pinned host-to-device copy bandwidth: best and median GB/s of `repeat` copies of
    `nbytes` (CUDA events), after a warm-up copy."""
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize(device)
    secs = []
    for _ in range(repeat):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src, non_blocking=True)
        b.record()
        b.synchronize()
        secs.append(a.elapsed_time(b) / 1e3)
    secs.sort()
    return {"bytes": nbytes, "gb_s": nbytes / secs[0] / 1e9, "gb_s_median": nbytes / secs[len(secs) // 2] / 1e9,
            "repeat": repeat}
