"""One streaming ingest pass: sampled frames -> chunks -> text lines -> vision tokens ->
chunk-based prefill -> oracle vectors -> group commits, each stage pulling from the one
before it, so at any time a few chunks of frames are in memory.

Chunks commit in groups of `EngineConfig.gist_chunks` (aligned: chunks g*G .. g*G+G-1), one
write transaction each; the group's gist part (its H-KVs pooled once more, level G) is
stored with its first chunk. A kill loses at most the group in flight; a resumed ingest
decodes past the committed chunks (checking their spans) and prefills from the first one
missing, with its prefill window read back from the store.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from videokv.engine.chunkkv import ChunkInput, PrefilledChunk
from videokv.engine.compress import gist
from videokv.kvstore.commits import ChunkWrite

from . import text as T
from .sampling import iter_frames
from .stream import ChunkFrames, stream_chunks
from .text.ocr import ocr_size
from .text.stream import TextStream
from .text.subtitles import has_subtitle_stream
from .video import VideoInfo

# Frames per vision-tower call when chunks are batched (the GPU path).
VISION_BATCH_FRAMES = 256


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [0, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)


@dataclass
class RunResult:
    plan: list = field(default_factory=list)       # every chunk's span
    text_chunks: list = field(default_factory=list)  # per chunk: has a text line
    computed: int = 0                              # chunks prefilled by this run
    first: int = 0                                 # the first of them
    frames: int = 0                                # sampled frames of the video
    frames_computed: int = 0                       # of them, in chunks this run prefilled
    report: dict = field(default_factory=dict)     # the text channel's, per source


class StreamWriter:
    """pipe: the IngestPipeline (backend, store, config, oracles); fps: the sampling rate."""

    def __init__(self, pipe, video_id: str, path: Path, info: VideoInfo, opts: T.TextOptions, fps: float,
                 progress=None):
        self.pipe, self.video_id, self.path, self.info, self.opts, self.fps = pipe, video_id, path, info, opts, fps
        self.store, self.config, self.backend = pipe.store, pipe.config, pipe.backend
        self.progress = progress
        self.group_size = self.config.gist_chunks or 8
        self._checked_at = time.monotonic()
        self.text: TextStream | None = None
        self.wants_frames = any(getattr(o, "needs_frames", False) for o in pipe.oracles)
        self.pending: dict[int, torch.Tensor] = {}     # chunk -> its frames, for the oracles that need them
        self.lines: dict[int, str] = {}                # chunk -> its text line, until committed
        # One vision-tower call for several chunks on CUDA, for towers that see frames one by
        # one; one per chunk otherwise (a Qwen-VL tower patches a chunk's frames in time).
        self.batch_vision = self.backend.device.type == "cuda" and getattr(self.backend.vision,
                                                                           "frames_independent", False)

    # ------------------------------------------------------------------ the pass
    def run(self) -> RunResult:
        store, vid = self.store, self.video_id
        if not store.has_prefix(vid):
            store.put_prefix(vid, [self.pipe.prefiller.prefix()])
        prefix = store.read_chunk(vid, -1, "full", fingerprint=self.pipe.fingerprint)
        done = store.committed_chunks(vid)
        k = next((i for i, c in enumerate(done) if c.index != i), len(done))     # 0..k-1 committed
        k -= k % self.group_size                     # resume at a group boundary (groups are atomic)
        self.out = RunResult(first=k)
        self.out.text_chunks = [c.text_line for c in done[:k]]
        self.done_spans = {c.index: c.span() for c in done[:k]}
        embedded = self.opts.subtitles and self.opts.subtitle_file is None and has_subtitle_stream(self.path)
        start_s = done[k - 1].t_end if k else 0.0
        if self.opts.active(embedded):
            carried = self._carried() if k else []
            self.text = TextStream(self.path, self.info.has_audio, self.opts,
                                            lambda line: len(self.backend.tokenize(line)), start_s, carried, embedded)
        try:
            self._prefill_and_commit(prefix, k)
        except BaseException:
            if self.text is not None:
                self.text.close()
            raise
        if self.text is not None:
            rest, self.out.report = self.text.finish()
            if rest:
                store.put_chunks(vid, [], [s.to_dict() for s in rest], [], part_at=len(self.out.plan))
        return self.out

    def _prefill_and_commit(self, prefix, k: int) -> None:
        group: list = []
        for pc in self.pipe.prefiller.run(prefix, self._inputs(k), history=self._history(k)):
            group.append(pc)
            self.out.computed += 1
            if (pc.L.index + 1) % self.group_size == 0:
                self._commit(group)
                group = []
        if group:
            self._commit(group)

    def _inputs(self, k: int) -> Iterator[ChunkInput]:
        """ChunkInputs of the chunks from k on; the chunks before k are decoded past (their
        spans checked against the stored ones)."""
        extra = False if self.text is None or not self.opts.ocr else ocr_size(self.info.width, self.info.height)
        batches = iter_frames(self.path, self.config.sample_fps, self.config.max_frames,
                              size=self.backend.vision.input_size, info=self.info, extra_size=extra)
        chunks = stream_chunks(batches, self.config.chunk_frames, self.info.duration, 1.0 / self.fps)
        for group in self.vision_groups(self._new_chunks(chunks, k)):
            yield from self.chunk_inputs(group)

    def _new_chunks(self, chunks: Iterator[ChunkFrames], k: int) -> Iterator[ChunkFrames]:
        for cf in chunks:
            self.out.plan.append(cf.span)
            self.out.frames = cf.span.frame_end
            if cf.span.index < k:
                if self.done_spans[cf.span.index] != cf.span:
                    raise RuntimeError(f"chunk {cf.span.index} samples differently than when it was stored "
                                       "(was the file replaced?): delete the video and ingest it again")
                continue
            self._check_deleted()
            line = ""
            if self.text is not None:
                line = self.text.line(cf.span.t_start, cf.span.t_end, cf.extra, cf.times)
            self.lines[cf.span.index] = line
            self.out.text_chunks.append(bool(line))
            self.out.frames_computed += cf.span.num_frames
            yield cf

    def vision_groups(self, chunks: Iterator[ChunkFrames]) -> Iterator[list[ChunkFrames]]:
        """Chunks in groups that share one vision-tower call: up to VISION_BATCH_FRAMES frames
        when `batch_vision`, else one chunk."""
        group, n = [], 0
        for cf in chunks:
            group.append(cf)
            n += len(cf.frames)
            if not self.batch_vision or n >= VISION_BATCH_FRAMES:
                yield group
                group, n = [], 0
        if group:
            yield group

    def chunk_inputs(self, group: list[ChunkFrames]) -> list[ChunkInput]:
        xs = [frames_to_tensor(cf.frames) for cf in group]
        vis = self.backend.vision_tokens(torch.cat(xs)) if len(xs) > 1 else self.backend.vision_tokens(xs[0])
        out, at = [], 0
        for cf, x in zip(group, xs):
            # Batched towers return [frames, tokens, hidden]; a chunk alone: whatever the tower
            # makes of its frames (Qwen-VL: merged patches over time, [visual, hidden]).
            v = vis if len(group) == 1 else vis[at:at + len(x)]
            at += len(x)
            if self.wants_frames:
                self.pending[cf.span.index] = x
            s = cf.span
            out.append(ChunkInput(s.index, v.reshape(-1, v.shape[-1]), s.frame_start, s.frame_end, s.t_start,
                                  s.t_end, self.lines.get(s.index, "")))
        return out

    # ------------------------------------------------------------------ commits
    def _commit(self, group: list[PrefilledChunk]) -> None:
        """One write transaction for the group: its chunks, their vectors, its gist part, and
        the text segments that became final meanwhile."""
        writes = [self._write(pc) for pc in group]
        if self.config.gist_chunks and group[0].L.index % self.config.gist_chunks == 0:
            writes[0].levels.append(gist([pc.H for pc in group], self.config.gist_ratio))
        part = opened = None
        if self.text is not None:
            part = [s.to_dict() for s in self.text.take_final()]
            opened = [s.to_dict() for s in self.text.open_segments()]
        self.store.put_chunks(self.video_id, writes, part, opened)
        self.store.release_pages()            # RSS stays flat however much is stored (env.py)
        if self.progress:
            self.progress(group[-1].L.index + 1, max(self.store.get_video(self.video_id).chunks_expected,
                                                     group[-1].L.index + 1))

    def _write(self, pc: PrefilledChunk) -> ChunkWrite:
        i = pc.L.index
        frames = self.pending.pop(i, None)
        emb, per_frame = {}, {}
        for o in self.pipe.oracles:
            vec, fv = o.chunk_and_frame_vectors(pc.L, frames=frames)
            emb[o.identity] = vec.numpy()
            if fv is not None and len(fv):
                per_frame[o.identity] = fv
        line = self.lines.pop(i, "")
        if self.pipe.text_oracle is not None and line:
            emb[self.pipe.text_oracle.identity] = self.pipe.text_oracle.chunk_vector(pc.L, text=line).numpy()
        return ChunkWrite([pc.L, pc.H], emb, per_frame, bool(line))

    # ------------------------------------------------------------------ resuming
    def _history(self, first: int) -> list[PrefilledChunk]:
        """The stored chunks before `first` that the prefill window needs (for resuming)."""
        p = self.config.prefill
        if first == 0 or p.window == 0:
            return []
        if "full" in (p.window_level, p.prev_level):
            raise RuntimeError("resuming needs stored context, but window level 'full' is not stored; "
                               "re-ingest from scratch")
        start = 0 if p.window < 0 else max(0, first - p.window)
        read = self.store.read_chunk
        fp = self.pipe.fingerprint
        return [PrefilledChunk(read(self.video_id, i, "L", fingerprint=fp), read(self.video_id, i, "H", fingerprint=fp))
                for i in range(start, first)]

    def _carried(self) -> list[T.TextSegment]:
        """The text segments open at the last commit before a resume (they end there)."""
        return [T.TextSegment.from_dict(d) for d in self.store.open_text_segments(self.video_id)]

    def _check_deleted(self, every_s: float = 2.0) -> None:
        """Raise VideoNotFoundError once the video is deleted (looks every `every_s` s)."""
        if time.monotonic() - self._checked_at >= every_s:
            self._checked_at = time.monotonic()
            self.store.get_video(self.video_id)

