"""Shared by the kvstore tests and their worker processes: deterministic small chunks."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from videokv.engine.chunkkv import ChunkKV

FP = "fp-test-0001"
ORACLE = "orc"
DIM = 256                      # one-hot embeddings: video_no * 50 + chunk < DIM
GEOM = dict(layers=2, kv_heads=1, head_dim=4)
TOKENS = {"full": 16, "L": 8, "H": 4}


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def plan(n: int, chunk_frames: int = 16) -> list[dict]:
    return [dict(index=i, frame_start=i * chunk_frames, frame_end=(i + 1) * chunk_frames,
                 t_start=float(i * chunk_frames), t_end=float((i + 1) * chunk_frames)) for i in range(n)]


def make_chunk(video_no: int, index: int, level: str, fp: str = FP, dtype=torch.float32,
               tokens: int | None = None) -> ChunkKV:
    """Deterministic in (video_no, index, level) across processes (no str hash): a reader
    can recompute what it expects."""
    t = tokens or TOKENS[level]
    g = torch.Generator().manual_seed(video_no * 1_000_003 + (index + 1) * 7 + "full LH".index(level[0]))
    shape = (GEOM["layers"], GEOM["kv_heads"], t, GEOM["head_dim"])
    k = torch.randn(shape, generator=g).to(dtype)
    v = torch.randn(shape, generator=g).to(dtype)
    kinds = (torch.arange(t) % 2).to(torch.uint8)
    i0 = max(index, 0)
    return ChunkKV(k, v, kinds, index, frame_start=i0 * 16, frame_end=i0 * 16 + 16,
                   t_start=float(i0 * 16), t_end=float(i0 * 16 + 16), level=level, fingerprint=fp)


def embedding(video_no: int, index: int) -> np.ndarray:
    e = np.zeros(DIM, np.float32)
    e[video_no * 50 + index] = 1.0
    return e


def ingest(store, video_id: str, video_no: int, on_chunk=None, l_tokens: int | None = None,
           fp: str = FP) -> int:
    """Resume-style ingest: prefix if missing, then every missing chunk, then READY.
    Returns how many chunks this call committed."""
    if not store.has_prefix(video_id):
        store.put_prefix(video_id, [make_chunk(video_no, -1, "full", fp)])
    written = 0
    for i in store.missing_chunks(video_id):
        levels = [make_chunk(video_no, i, "L", fp, tokens=l_tokens), make_chunk(video_no, i, "H", fp)]
        if store.put_chunk(video_id, levels, {ORACLE: embedding(video_no, i)}):
            written += 1
        if on_chunk:
            on_chunk(i)
    store.mark_ready(video_id, [ORACLE])
    return written
