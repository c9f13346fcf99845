"""The ingest pipeline: file -> frames -> vision tokens -> chunk-based prefill -> L-KV and
H-KV -> KV store, one committed transaction per chunk (so a rerun resumes where it stopped).

Nothing is stored before the file has been probed and decoded: a bad input leaves no trace.

With a text channel (ingest/text), the video's text is extracted once before the first
chunk and stored with its content (a resumed ingest reuses it); each chunk's line goes
after its timestamp, and chunks with text are also indexed by the text oracle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from videokv.engine.backend import HFCausalBackend
from videokv.engine.config import EngineConfig
from videokv.engine.prefill import ChunkInput, ChunkPrefiller, PrefilledChunk
from videokv.kvstore import KVStore, Status, VideoNotFoundError
from videokv.oracles.base import RelevanceOracle

from . import text as T
from .chunks import ChunkPlan, plan_chunks
from .text.subtitles import has_subtitle_stream
from .video import NoFrames, VideoInfo, content_hash, probe, sample_frames

Progress = Callable[[int, int], None]  # (chunks done, chunks total)
StageProgress = Callable[[str, int, int], None]  # (text stage e.g. "ocr", done, total)


@dataclass
class IngestResult:
    video_id: str
    status: str
    chunks_total: int
    chunks_prefilled: int          # this run (0 when deduplicated or already complete)
    resumed_from: int              # first chunk this run computed (0 = from scratch)
    deduplicated: bool
    frames: int
    seconds: float
    frames_per_s: float
    tokens_per_s: float
    text: dict = None          # the text channel's report per source (None: no text channel)


def _checked(stage_progress: StageProgress | None, check: Callable[[], None]) -> StageProgress:
    """A stage-progress callback that also runs `check` (which raises to stop the work)."""
    def update(stage: str, done: int, total: int) -> None:
        check()
        if stage_progress:
            stage_progress(stage, done, total)
    return update


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [0, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)


class IngestPipeline:
    """Ingests files into `store` with one backend/config and the given oracles."""

    def __init__(self, backend: HFCausalBackend, store: KVStore, config: EngineConfig,
                 oracles: Sequence[RelevanceOracle] = (),
                 text_oracle: RelevanceOracle | None = None, text_defaults: T.TextOptions | None = None,
                 share_across_tenants: bool = False):
        self.backend, self.store, self.config = backend, store, config
        self.fingerprint = config.fingerprint()
        self.prefiller = ChunkPrefiller(backend, config, self.fingerprint)
        self.oracles = list(oracles)
        self.text_oracle = text_oracle
        self.text_defaults = text_defaults or T.TextOptions()
        self.share_across_tenants = share_across_tenants

    def ingest(self, path: str | Path, tenant: str = "default", filename: str | None = None,
               progress: Progress | None = None, text: T.TextOptions | None = None,
               stage_progress: StageProgress | None = None) -> IngestResult:
        """Register the file as the tenant's video (or find it: the same bytes, text channels and
        model config are stored once) and ingest it. text: which text channels run (default:
        the pipeline's text_defaults, from settings). The CLI's path; the service registers
        at upload and its worker calls `ingest_video`."""
        t0 = time.perf_counter()
        path = Path(path)
        info = probe(path)                                    # bad input raises here: nothing stored
        opts = text or self.text_defaults
        T.check_tools(opts)
        if opts.subtitle_file is not None:
            from .text.subtitles import parse_file
            parse_file(opts.subtitle_file)                    # a bad .srt fails before anything is stored
        embedded = opts.subtitles and opts.subtitle_file is None and has_subtitle_stream(path)
        digest = T.content_key(content_hash(path), opts, embedded, None if self.share_across_tenants else tenant)
        rec = self.store.create_video(content_hash=digest, fingerprint=self.fingerprint, tenant=tenant, plan=[],
                                      filename=filename or path.name, container=info.container, codec=info.codec,
                                      duration=info.duration, fps=info.fps)
        return self.ingest_video(rec.video_id, path, opts, progress, stage_progress, info=info, t0=t0)

    def ingest_video(self, video_id: str, path: str | Path, text: T.TextOptions | None = None,
                     progress: Progress | None = None, stage_progress: StageProgress | None = None,
                     info: VideoInfo | None = None, t0: float | None = None) -> IngestResult:
        """Ingest `path` into the registered video `video_id`, never another: a video deleted
        before or during this raises VideoNotFoundError (every write checks the record), so a
        DELETE always wins. Resumes at the first chunk not yet committed."""
        t0 = time.perf_counter() if t0 is None else t0
        rec = self.store.get_video(video_id)
        if rec.status is Status.READY:
            return IngestResult(rec.video_id, "READY", rec.chunks_total, 0, rec.chunks_total, True,
                                rec.sampled_frames, time.perf_counter() - t0, 0.0, 0.0, (rec.extra or {}).get("text"))
        path = Path(path)
        info = info or probe(path)
        opts = text or self.text_defaults
        embedded = opts.subtitles and opts.subtitle_file is None and has_subtitle_stream(path)
        vision = self.backend.vision
        still_there = self._deletion_check(video_id)
        sampled = sample_frames(path, self.config.sample_fps, self.config.max_frames, size=vision.input_size, info=info)
        plan = plan_chunks(sampled.timestamps, info.duration, self.config.chunk_frames, self.config.sample_fps)
        if len(plan) == 0:                                    # nothing stored but the record
            raise NoFrames(path, f"{path.name}: no frames could be sampled from this video")
        if rec.chunks_total == 0:
            rec = self.store.update_video(video_id, plan=list(plan.chunks), sampled_frames=len(sampled),
                                          duration=info.duration, fps=info.fps)
        report = None
        try:
            self.store.set_status(video_id, Status.INGESTING)
            lines = None
            if opts.active(embedded):
                lines, report = self._text_lines(video_id, path, info, opts, plan,
                                                 _checked(stage_progress, still_there))
            done, first = self._run(video_id, plan, sampled.frames, progress, lines)
            if lines and any(lines):
                # text_chunks: the chunks with a text line (questions page their H text rows too)
                extra = {**(self.store.get_video(video_id).extra or {}),
                         "text_chunks": [i for i, line in enumerate(lines) if line]}
                if self.text_oracle is not None:
                    extra["text_oracle"] = self.text_oracle.identity
                self.store.update_video(video_id, extra=extra)
            self.store.mark_ready(video_id, oracles=[o.identity for o in self.oracles])
        except VideoNotFoundError:
            raise                                 # deleted meanwhile: nothing to record
        except Exception as e:
            # A permanent error: record why. (A killed process leaves INGESTING: resumable.)
            self.store.set_status(video_id, Status.FAILED, reason=f"{type(e).__name__}: {e}")
            raise
        secs = time.perf_counter() - t0
        frames = plan[len(plan) - 1].frame_end - plan[first].frame_start if done else 0
        tokens = frames * vision.tokens_per_frame
        return IngestResult(video_id, "READY", len(plan), done, first, False, len(sampled), secs,
                            frames / secs if secs else 0.0, tokens / secs if secs else 0.0, report)

    def _deletion_check(self, video_id: str, every_s: float = 2.0) -> Callable[[], None]:
        """A check to call from long loops: raises VideoNotFoundError once the video is deleted
        (looks at the store at most every `every_s` seconds)."""
        last = [time.monotonic()]

        def check() -> None:
            if time.monotonic() - last[0] >= every_s:
                last[0] = time.monotonic()
                self.store.get_video(video_id)
        return check

    def _text_lines(self, vid: str, path: Path, info: VideoInfo, opts: T.TextOptions, plan: ChunkPlan,
                    stage_progress: StageProgress | None) -> tuple[list[str], dict]:
        """Each chunk's text line and the channel report. The extracted segments are stored
        before the first chunk, so a resumed ingest reuses them (same lines, same KVs)."""
        from .text.align import chunk_texts
        stored = self.store.get_transcript(vid)
        if stored is None:
            from .text.extract import extract_segments
            segs, report = extract_segments(path, info, opts, self.config.sample_fps, self.config.max_frames, stage_progress)
            stored = {"segments": [s.to_dict() for s in segs], "channels": report}
            self.store.put_transcript(vid, stored)
        segs = [T.TextSegment.from_dict(d) for d in stored["segments"]]
        lines = chunk_texts(segs, [(c.t_start, c.t_end) for c in plan], opts.max_tokens,
                            lambda line: len(self.backend.tokenize(line)))
        return lines, stored["channels"]

    def _run(self, vid: str, plan: ChunkPlan, frames: np.ndarray, progress: Progress | None,
             lines: list[str] | None = None) -> tuple[int, int]:
        """Prefill every chunk not yet committed; returns (chunks computed, first computed)."""
        if not self.store.has_prefix(vid):
            self.store.put_prefix(vid, [self.prefiller.prefix()])
        prefix = self.store.read_chunk(vid, -1, "full", fingerprint=self.fingerprint)
        missing = self.store.missing_chunks(vid)
        total = len(plan)
        if progress:
            progress(total - len(missing), total)
        if not missing:
            return 0, total
        first = missing[0]
        history = self._history(vid, first)

        wants_frames = any(getattr(o, "needs_frames", False) for o in self.oracles)
        pending: dict[int, torch.Tensor] = {}   # chunk index -> its frames, until its oracles ran
        line = (lambda i: lines[i]) if lines else (lambda i: "")

        def inputs():
            if self._batch_vision():
                yield from self._batched_inputs(plan.chunks[first:], frames, pending if wants_frames else None, line)
                return
            for c in plan.chunks[first:]:
                x = frames_to_tensor(frames[c.frame_start:c.frame_end])
                if wants_frames:
                    pending[c.index] = x
                visual = self.backend.vision_tokens(x)
                yield ChunkInput(c.index, visual.reshape(-1, visual.shape[-1]), c.frame_start, c.frame_end,
                                 c.t_start, c.t_end, line(c.index))

        computed = 0
        for pc in self.prefiller.run(prefix, inputs(), history=history):
            chunk_frames = pending.pop(pc.L.index, None)
            emb, per_frame = {}, {}
            for o in self.oracles:
                vec, fv = o.chunk_and_frame_vectors(pc.L, frames=chunk_frames)
                emb[o.identity] = vec.numpy()
                if fv is not None and len(fv):
                    per_frame[o.identity] = fv
            if self.text_oracle is not None and line(pc.L.index):
                emb[self.text_oracle.identity] = self.text_oracle.chunk_vector(pc.L, text=line(pc.L.index)).numpy()
            self.store.put_chunk(vid, [pc.L, pc.H], emb, per_frame)    # one transaction; idempotent
            computed += 1
            if progress:
                progress(pc.L.index + 1, total)
        return computed, first

    # Frames per vision-tower call when chunks are batched (GPU fast path).
    VISION_BATCH_FRAMES = 256

    def _batch_vision(self) -> bool:
        """Batch the vision tower across chunks: on CUDA, for towers that see each frame on its
        own (a Qwen-VL tower patches frames in time, so a chunk's frames must stay one call)."""
        vision = self.backend.vision
        return self.backend.device.type == "cuda" and getattr(vision, "frames_independent", False)

    def _batched_inputs(self, chunks, frames: np.ndarray, pending: dict | None, line=lambda i: ""):
        """ChunkInputs whose vision tokens come from one tower call per VISION_BATCH_FRAMES frames."""
        group: list = []
        n = 0

        def flush():
            xs = [frames_to_tensor(frames[c.frame_start:c.frame_end]) for c in group]
            vis = self.backend.vision_tokens(torch.cat(xs))
            out, at = [], 0
            for c, x in zip(group, xs):
                v = vis[at:at + x.shape[0]]
                at += x.shape[0]
                if pending is not None:
                    pending[c.index] = x
                out.append(ChunkInput(c.index, v.reshape(-1, v.shape[-1]), c.frame_start, c.frame_end,
                                      c.t_start, c.t_end, line(c.index)))
            return out

        for c in chunks:
            group.append(c)
            n += c.frame_end - c.frame_start
            if n >= self.VISION_BATCH_FRAMES:
                yield from flush()
                group, n = [], 0
        if group:
            yield from flush()

    def _history(self, vid: str, first: int) -> list[PrefilledChunk]:
        """The stored chunks before `first` that the prefill window needs (for resuming)."""
        p = self.config.prefill
        if first == 0 or p.window == 0:
            return []
        if "full" in (p.window_level, p.prev_level):
            raise RuntimeError("resuming needs stored context, but window level 'full' is not stored; "
                               "re-ingest from scratch")
        start = 0 if p.window < 0 else max(0, first - p.window)
        return [PrefilledChunk(self.store.read_chunk(vid, i, "L", fingerprint=self.fingerprint),
                               self.store.read_chunk(vid, i, "H", fingerprint=self.fingerprint))
                for i in range(start, first)]

