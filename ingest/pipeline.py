"""The ingest pipeline: file -> sampled frames -> chunks -> vision tokens -> chunk-based
prefill -> L-KV and H-KV (and, per group of chunks, the gist level G) -> KV store, in one
streaming pass (`writer.py`): memory holds a few chunks whatever the video's length, chunks
commit in groups, a killed ingest resumes at its first uncommitted chunk.

Nothing is stored before the file has been probed: a bad input leaves no trace. Sampling is
at the configured rate for any length; a frame cap applies only when set
(`EngineConfig.max_frames`), and the record then says the rate really used (`sample_fps`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from videokv.engine.backend import HFCausalBackend
from videokv.engine.config import EngineConfig
from videokv.engine.prefill import ChunkPrefiller
from videokv.kvstore import KVStore, Status, VideoNotFoundError
from videokv.oracles.base import RelevanceOracle

from . import text as T
from .sampling import effective_fps, sample_targets
from .text.subtitles import has_subtitle_stream
from .video import NoFrames, VideoInfo, content_hash, probe
from .writer import StreamWriter, frames_to_tensor  # noqa: F401 (frames_to_tensor: tests, benches)

Progress = Callable[[int, int], None]  # (chunks done, chunks expected)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB: VmHWM of /proc/self/status.
    Not getrusage's ru_maxrss: Linux carries that across fork and exec, so a child started
    by a big process reports its parent's size (a 300 MB ingest run from a 4.8 GB bench
    process said 4.8 GB)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):          # not Linux: the rusage figure is the best there is
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class IngestResult:
    video_id: str
    status: str
    chunks_total: int
    chunks_prefilled: int          # this run (0 when deduplicated or already complete)
    resumed_from: int              # first chunk this run computed (0 = from scratch)
    deduplicated: bool
    frames: int                    # sampled frames of the video
    seconds: float
    frames_per_s: float            # sampled frames this run went through, per second
    tokens_per_s: float
    text: dict = None              # the text channel's report per source (None: no text channel)
    duration_s: float = 0.0
    sample_fps: float = 0.0        # the rate it was sampled at (lower than the setting when capped)
    frames_prefilled: int = 0      # sampled frames in the chunks this run prefilled


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
               progress: Progress | None = None, text: T.TextOptions | None = None) -> IngestResult:
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
        return self.ingest_video(rec.video_id, path, opts, progress, info=info, t0=t0)

    def ingest_video(self, video_id: str, path: str | Path, text: T.TextOptions | None = None,
                     progress: Progress | None = None, info: VideoInfo | None = None,
                     t0: float | None = None) -> IngestResult:
        """Ingest `path` into the registered video `video_id`, never another: a video deleted
        before or during this raises VideoNotFoundError (every write checks the record), so a
        DELETE always wins. Resumes at the first chunk not yet committed."""
        t0 = time.perf_counter() if t0 is None else t0
        rec = self.store.get_video(video_id)
        if rec.status is Status.READY:
            return IngestResult(rec.video_id, "READY", rec.chunks_total, 0, rec.chunks_total, True,
                                rec.sampled_frames, time.perf_counter() - t0, 0.0, 0.0, (rec.extra or {}).get("text"),
                                rec.duration, rec.sample_fps)
        path = Path(path)
        info = info or probe(path)
        opts = text or self.text_defaults
        cfg = self.config
        fps = effective_fps(info.duration, cfg.sample_fps, cfg.max_frames)
        targets = len(sample_targets(info.duration, cfg.sample_fps, cfg.max_frames))
        self.store.update_video(video_id, duration=info.duration, fps=info.fps, sample_fps=fps,
                                chunks_expected=math.ceil(targets / cfg.chunk_frames))
        writer = StreamWriter(self, video_id, path, info, opts, fps, progress)
        try:
            self.store.set_status(video_id, Status.INGESTING)
            run = writer.run()
            if not run.plan:
                raise NoFrames(path, f"{path.name}: no frames could be sampled from this video")
            extra = {"text": run.report} if run.report else {}
            if cfg.gist_chunks:
                extra["gist_chunks"] = cfg.gist_chunks          # the gist level's group size
            if any(run.text_chunks):
                extra["text_chunks"] = [i for i, has in enumerate(run.text_chunks) if has]
                if self.text_oracle is not None:
                    extra["text_oracle"] = self.text_oracle.identity
            self.store.update_video(video_id, sampled_frames=run.frames)
            self.store.finish(video_id, run.plan, [o.identity for o in self.oracles], extra)
        except VideoNotFoundError:
            raise                                 # deleted meanwhile: nothing to record
        except Exception as e:
            # A permanent error: record why. (A killed process leaves INGESTING: resumable.)
            self.store.set_status(video_id, Status.FAILED, reason=f"{type(e).__name__}: {e}")
            raise
        secs = time.perf_counter() - t0
        return IngestResult(video_id, "READY", len(run.plan), run.computed, run.first, False, run.frames, secs,
                            run.frames_computed / secs if secs else 0.0,
                            run.frames_computed * self.backend.vision.tokens_per_frame / secs if secs else 0.0,
                            run.report or None, info.duration, fps, run.frames_computed)
