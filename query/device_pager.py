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
     before writing), and issues their copy. They travel as stored: a scaled codec's codes
     and statistics (`packed.PackedRows`: int8 is about a quarter of float32's bytes), a
     cast codec's narrower floats; only parts of mixed codecs are decoded on the host;
  3. on the compute stream, group by group as each copy lands, one fused gather + rotate
     (`gather_rotate`, torch.compile'd on CUDA; `dequant_gather_rotate` for packed rows,
     which dequantizes by the codec's own arithmetic first) writes keys rotated to their
     contiguous positions, and values, straight into the assembled [layers, kv_heads, N,
     head_dim] cache: no host-side concatenation, no second pass over the bytes.

The hot set stays decoded in the model's dtype: it is read once per video and kept, so its
decode is paid once, not per question (its copy to the device is per question).

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
from videokv.kvstore.codecs import Cast, row_count, take_rows
from videokv.kvstore.packed import PackedRows, dequantize_rows, packed_specs, payload_of

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


def dequant_gather_rotate(codes, key_scale, key_min, value_scale, value_min, key_group, kind: str,
                          idx: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out_k: torch.Tensor,
                          out_v: torch.Tensor, dst: torch.Tensor) -> None:
    """`gather_rotate` of rows still in a scaled codec (the fields of packed.PackedRows; kind:
    the codec's name): dequantized by the codec's own arithmetic (`dequantize_rows`), rotated,
    written. Equals decoding on the host then `gather_rotate`, bit for bit (tests check it)."""
    k, v = dequantize_rows(codes, key_scale, key_min, value_scale, value_min, key_group, idx, out_k.dtype, kind)
    k = k.float()
    out_k.index_copy_(2, dst, (k * cos + rotate_half(k) * sin).to(out_k.dtype))
    out_v.index_copy_(2, dst, v)


@dataclass
class Staged:
    """One question's parts read past the hot set: `tensors` in the staging buffer (layers
    first: [layers, 2, kv_heads, T, head_dim] as stored or decoded, or the layered tensors of
    `packed`), each part's shape-only ChunkKV (`parts`, on the meta device) and first row
    (`offsets`), and the bytes they were stored in."""

    tensors: list[torch.Tensor]
    packed: PackedRows | None
    parts: dict
    offsets: dict
    stored: int

    @property
    def nbytes(self) -> int:
        """What goes over PCIe for them."""
        extra = 0 if self.packed is None else self.packed.key_group.nbytes
        return sum(t.nbytes for t in self.tensors) + extra


class FusedGatherRotate:
    """`gather_rotate` compiled by torch.compile (fused kernels on CUDA; dynamic shapes, so a
    new context length does not recompile). torch.compile is lazy: if the first call fails
    (no compiler, unsupported build) this falls back to the eager function for good and says
    why in `error`. The first call compiles (seconds): warm it up before timing."""

    def __init__(self, fn=gather_rotate):
        self.fn = fn
        self.compiled = None
        self.ok: bool | None = None
        self.error = ""

    @property
    def kind(self) -> str:
        return {True: "torch.compile", False: "eager (compile failed)", None: "not run yet"}[self.ok]

    def __call__(self, *args) -> None:
        if self.ok is None:
            try:
                self.compiled = torch.compile(self.fn, dynamic=True)
                self.compiled(*args)
                self.ok = True
                return
            except Exception as e:  # noqa: BLE001 - the eager version is still correct
                self.ok, self.error = False, f"{type(e).__name__}: {e}"[:500]
        (self.compiled if self.ok else self.fn)(*args)


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
        return self.take_all([(dtype, shape)])[0]

    def take_all(self, specs: list[tuple[torch.dtype, tuple]]) -> list[torch.Tensor]:
        """Views for several (dtype, shape), one after the other, each 64-byte aligned."""
        starts, n = [], 0
        for dtype, shape in specs:
            starts.append(n)
            n += -(-int(np.prod(shape)) * dtype.itemsize // 64) * 64
        if self._buf is None or self._buf.numel() < n:
            size = max(n, 2 * self.nbytes, 1 << 20)
            self._buf = None                      # free the old one first
            self._buf = torch.empty(size, dtype=torch.uint8, pin_memory=self.pin)
            self.grows += 1
        else:
            self.reuses += 1
        return [self._buf[a:a + int(np.prod(shape)) * dtype.itemsize].view(dtype).view(*shape)
                for a, (dtype, shape) in zip(starts, specs)]


@dataclass
class DevicePaged:
    """cache: the assembled cache on the device (keys rotated); bytes_in_context: KV bytes of
    every part in it; bytes_read: bytes read from the store for this question."""

    cache: AssembledCache
    bytes_in_context: int
    bytes_read: int
    layout: Layout
    bytes_shipped: int = 0        # host -> device: the hot set and the staged parts as shipped


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
        fused = self.cuda if compile is None else compile
        self._fn = FusedGatherRotate() if fused else gather_rotate
        self._dq = FusedGatherRotate(dequant_gather_rotate) if fused else dequant_gather_rotate
        self._lock = threading.Lock()

    def evict(self, video_id: str) -> None:
        self.hot.evict(video_id)

    # ------------------------------------------------------------------ paging
    def _groups(self, layers: int) -> list[tuple[int, int]]:
        g = min(self.groups, layers)
        cuts = [round(j * layers / g) for j in range(g + 1)]
        return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]

    def _copy(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], groups) -> list:
        """Copy each (dst, src) group by group (on the side stream on CUDA); one event per group."""
        if not self.cuda:
            for a, b in groups:
                for dst, src in pairs:
                    dst[a:b].copy_(src[a:b])
            return [None] * len(groups)
        events = []
        with torch.cuda.stream(self.copy_stream):
            for a, b in groups:
                for dst, src in pairs:
                    dst[a:b].copy_(src[a:b], non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(self.copy_stream)
                events.append(ev)
        return events

    def _to_device(self, tensors: list[torch.Tensor], groups) -> tuple[list[torch.Tensor], list]:
        """(device copies of host tensors [layers, ...], one event per layer group); on the CPU
        the tensors themselves."""
        if not self.cuda:
            return tensors, [None] * len(groups)
        dev = [torch.empty(t.shape, dtype=t.dtype, device=self.device) for t in tensors]
        return dev, self._copy(list(zip(dev, tensors)), groups)

    @torch.no_grad()
    def load(self, video_id: str, layout: Layout) -> DevicePaged:
        """The layout's parts assembled on the device (work may still be in flight on the
        current stream: whatever runs next on it sees the finished cache)."""
        with self._lock:
            return self._load(video_id, layout)

    def _stage(self, video_id: str, wanted: list[tuple[int, str]]) -> Staged | None:
        """Read the parts not in the hot set out of the map into the reused staging buffer: as
        stored when they share a codec (dequantized on the device), else decoded here."""
        if not wanted:
            return None
        if self._staging_free is not None:
            self._staging_free.synchronize()      # the previous question's copy out of it is done
        with self.store.reader() as r:
            rec = r.video(video_id)
            text_chunks = text_chunks_of(rec)
            views = [part_rows(r, video_id, i, lvl, self.fingerprint, self.hot.h_text, text_chunks)
                     for i, lvl in wanted]
            codecs = {v.header.codec for v, _ in views}
            codec = codecs.pop() if len(codecs) == 1 else None
            staged = Staged([], None, {}, {}, sum(stored_bytes(v, rows) for v, rows in views))
            if codec is not None and not isinstance(codec, Cast):
                self._stage_packed(views, codec, staged)
            else:
                self._stage_rows(views, codec.store_dtype if codec is not None else None, staged)
            off = 0
            for key, (v, rows) in zip(wanted, views):
                n = row_count(rows, v.header.tokens)
                kinds = v.kinds if rows is None else v.kinds[rows]
                shape = (v.header.layers, v.header.kv_heads, n, v.header.head_dim)
                kv = torch.empty(shape[0], 2, *shape[1:], dtype=self.backend.dtype, device="meta")
                staged.parts[key] = as_part(r, video_id, key[0], key[1], kv, kinds.clone(), rec.fingerprint)
                staged.offsets[key] = off
                off += n
        return staged

    def _stage_rows(self, views, store_dtype: torch.dtype | None, staged: Staged) -> None:
        """One [layers, 2, kv_heads, T, head_dim] stage: a cast codec's rows as stored
        (store_dtype), anything else decoded to the model's dtype."""
        h0 = views[0][0].header
        total = sum(row_count(rows, v.header.tokens) for v, rows in views)
        stage = self.staging.take((h0.layers, 2, h0.kv_heads, total, h0.head_dim), store_dtype or h0.dtype)
        off = 0
        for v, rows in views:
            n = row_count(rows, v.header.tokens)
            if store_dtype is None:
                v.take_into(stage[:, :, :, off:off + n], rows)       # decoded here (mixed codecs)
            else:
                stage[:, :, :, off:off + n].copy_(take_rows(v.parts[0], 3, rows))
            off += n
        staged.tensors = [stage]

    def _stage_packed(self, views, codec, staged: Staged) -> None:
        """The rows of a scaled codec's blobs as stored (packed.PackedRows), blob after blob."""
        h0 = views[0][0].header
        L, H, D = h0.layers, h0.kv_heads, h0.head_dim
        ns = [row_count(rows, v.header.tokens) for v, rows in views]
        kgs = [codec.groups(v.header.tokens, D)[0] for v, _ in views]
        gs = [-(-v.header.tokens // kg) for (v, _), kg in zip(views, kgs)]
        tensors = self.staging.take_all(packed_specs(codec, L, H, sum(ns), sum(gs), D))
        key_group = torch.empty(sum(ns), dtype=torch.int32)
        packed = PackedRows(codec, *payload_of(codec, tensors), key_group)
        off = goff = 0
        for (v, rows), n, kg, g in zip(views, ns, kgs, gs):
            codes, ks, km, vs, vm = payload_of(codec, v.parts)
            at = take_rows(torch.arange(v.header.tokens), 0, rows)
            packed.codes[:, :, :, off:off + n].copy_(take_rows(codes, 3, rows))
            packed.key_scale[:, :, goff:goff + g].copy_(ks)
            packed.value_scale[:, :, off:off + n].copy_(take_rows(vs, 2, rows))
            if km is not None:
                packed.key_min[:, :, goff:goff + g].copy_(km)
                packed.value_min[:, :, off:off + n].copy_(take_rows(vm, 2, rows))
            key_group[off:off + n] = torch.div(at, kg, rounding_mode="floor") + goff
            off, goff = off + n, goff + g
        staged.tensors, staged.packed = tensors, packed

    def _load(self, video_id: str, layout: Layout) -> DevicePaged:
        be, dev = self.backend, self.device
        base = base_level(layout)
        hot, read = self.hot.get(video_id, base)
        layers = hot.kv.shape[0]
        groups = self._groups(layers)
        cur = torch.cuda.current_stream(dev) if self.cuda else None
        if self.cuda:
            self.copy_stream.wait_stream(cur)    # device buffers below are allocated on `cur`

        # 1. the hot set's copy goes first ...
        (dev_hot,), hot_events = self._to_device([hot.kv], groups)

        # 2. ... while the CPU reads the other parts out of the map into the staging buffer
        staged = self._stage(video_id, [p for p in layout.parts if p[1] != base])
        dev_s, s_events = [], [None] * len(groups)
        if staged is not None:
            read += staged.stored
            dev_s, s_events = self._to_device(staged.tensors, groups)
            if self.cuda:
                self._staging_free = torch.cuda.Event()
                self._staging_free.record(self.copy_stream)

        # 3. positions and the gather plan: which row of which source lands where
        parts, spans, plan = self._plan(hot, base, layout, staged)
        pos, next_pos = be.part_positions(parts)
        if self.cuda:
            plan = [x.pin_memory().to(dev, non_blocking=True) for x in plan]
        src_h, dst_h, src_s, dst_s, key_group = plan
        cos, sin = be.rotary.cos_sin(pos, dev)
        cos_h, sin_h = cos.index_select(0, dst_h), sin.index_select(0, dst_h)
        cos_s, sin_s = cos.index_select(0, dst_s), sin.index_select(0, dst_s)

        # 4. per layer group, as its bytes land: gather (+ dequantize) + rotate into the cache
        kvh, D = hot.kv.shape[2], hot.kv.shape[4]
        N = int(pos.numel())
        out_k = torch.empty(layers, kvh, N, D, dtype=be.dtype, device=dev)
        out_v = torch.empty(layers, kvh, N, D, dtype=be.dtype, device=dev)
        packed = None if staged is None else staged.packed
        for (a, b), ev_h, ev_s in zip(groups, hot_events, s_events):
            if ev_h is not None:
                cur.wait_event(ev_h)
            self._fn(dev_hot[a:b, 0], dev_hot[a:b, 1], src_h, cos_h, sin_h, out_k[a:b], out_v[a:b], dst_h)
            if not dev_s:
                continue
            if ev_s is not None:
                cur.wait_event(ev_s)
            if packed is None:
                self._fn(dev_s[0][a:b, 0], dev_s[0][a:b, 1], src_s, cos_s, sin_s, out_k[a:b], out_v[a:b], dst_s)
            else:
                p = packed.with_layered([t[a:b] for t in dev_s], key_group)
                self._dq(p.codes, p.key_scale, p.key_min, p.value_scale, p.value_min, p.key_group,
                         packed.codec.name, src_s, cos_s, sin_s, out_k[a:b], out_v[a:b], dst_s)
        cache = AssembledCache(out_k, out_v, spans, next_pos)
        shipped = hot.nbytes + (0 if staged is None else staged.nbytes)
        return DevicePaged(cache, sum(p.nbytes for p in parts), read, layout, shipped)

    @staticmethod
    def _plan(hot, base: str, layout: Layout, staged: Staged | None):
        """(the parts in context order, their (index, start, end) spans, the gather plan:
        [source rows in the hot set, their context rows, source rows in the stage, their
        context rows, each stage row's key group (packed stages; else empty)], int64)."""
        parts = [hot.parts[0]] + [hot.parts[hot.position(i)] if lvl == base else staged.parts[(i, lvl)]
                                  for i, lvl in layout.parts]
        spans, start = [], 0
        src_h, dst_h, src_s, dst_s = [], [], [], []
        for j, p in enumerate(parts):
            t = p.tokens
            spans.append((p.index, start, start + t))
            key = layout.parts[j - 1] if j else None
            if key is not None and staged is not None and key in staged.parts:
                src_s.append(np.arange(staged.offsets[key], staged.offsets[key] + t))
                dst_s.append(np.arange(start, start + t))
            else:
                first = hot.offsets[0 if key is None else hot.position(key[0])]
                src_h.append(np.arange(first, first + t))
                dst_h.append(np.arange(start, start + t))
            start += t
        plan = [torch.from_numpy(np.concatenate(x) if x else np.zeros(0, np.int64)).long()
                for x in (src_h, dst_h, src_s, dst_s)]
        packed = None if staged is None else staged.packed
        plan.append(packed.key_group if packed is not None else torch.zeros(0, dtype=torch.int32))
        return parts, spans, plan


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
