"""Streaming ingest: memory does not grow with the video's length; chunks as the frames arrive
are the planned ones; no silent cap, and a cap that applies says the rate it gave."""

import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from tests.conftest import MODEL_CACHE, make_runtime
from videokv.bench.memtrack import PeakTensorMemory
from videokv.ingest.chunks import plan_chunks
from videokv.ingest.sampling import iter_frames, sample_frames
from videokv.ingest.stream import stream_chunks
from videokv.ingest.video import probe
from videokv.toyworld.synth import render_video


def ingest_peak_bytes(rt, path) -> int:
    """Peak of what the ingest itself holds: torch tensors it creates (PeakTensorMemory) plus
    Python and numpy allocations (tracemalloc: numpy reports its buffers to it). The oracles
    are loaded first: their weights are not the ingest's working set."""
    rt.pipeline
    tracemalloc.start()
    try:
        with PeakTensorMemory() as mem:
            rt.pipeline.ingest(path)
        _, py_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return mem.peak_bytes + py_peak


def test_ingest_memory_does_not_grow_with_length(tmp_path, embedded_backend):
    short, long = tmp_path / "short.mp4", tmp_path / "long.mp4"
    render_video(short, 1.6, 2, seed=3)            # 96 frames, 6 chunks
    render_video(long, 3.2, 4, seed=4)             # 192 frames, 12 chunks
    peaks = {}
    for name, path in (("short", short), ("long", long)):
        rt = make_runtime(tmp_path / name, gist_chunks=2)    # groups of 2: both videos span several
        rt.backend = embedded_backend
        peaks[name] = ingest_peak_bytes(rt, path)
        assert rt.store.list_videos()[0].chunks_total == (6 if name == "short" else 12)
    size = embedded_backend.vision.input_size
    extra_frames = sample_frames(long, 1.0, size=size).frames.nbytes - sample_frames(short, 1.0, size=size).frames.nbytes
    # 2x the length, the same working set: growing by the extra frames' bytes (what holding a
    # video's frames costs) would show as 3.5 MB here
    assert peaks["long"] - peaks["short"] < 0.25 * extra_frames, (extra_frames, peaks)
    assert peaks["long"] <= 1.05 * peaks["short"], peaks


def test_chunks_as_the_frames_arrive_are_the_planned_chunks(toy_video):
    path = toy_video[0]
    info = probe(path)
    for fps, chunk in ((1.0, 16), (0.7, 5), (2.0, 16)):
        got = list(stream_chunks(iter_frames(path, fps, size=(32, 24), info=info, batch_size=7), chunk,
                                 info.duration, 1.0 / fps))
        whole = sample_frames(path, fps, size=(32, 24), info=info)
        planned = plan_chunks(whole.timestamps, info.duration, chunk, fps).chunks
        assert [c.span for c in got] == list(planned), fps
        assert np.array_equal(np.concatenate([c.frames for c in got]), whole.frames)


def test_no_silent_cap_and_a_capped_ingest_reports_its_rate(tmp_path, toy_video, embedded_backend):
    """Unset, VIDEOKV_MAX_FRAMES caps nothing; set, the record, the ingest result, the CLI's
    JSON and every answer say the rate really used."""
    rt = make_runtime(tmp_path / "free")
    assert rt.settings.max_frames is None and rt.config.max_frames is None
    rt = make_runtime(tmp_path / "capped", max_frames=48)
    rt.backend = embedded_backend
    res = rt.pipeline.ingest(toy_video[0])             # 96 s: 48 frames is 0.5 fps
    rec = rt.store.get_video(res.video_id)
    assert res.frames == rec.sampled_frames == 48 and res.sample_fps == rec.sample_fps == pytest.approx(0.5)
    assert rec.chunks_total == 3 and rec.plan[1].t_start == pytest.approx(32.0, abs=0.1)
    ans = rt.queries.ask(res.video_id, "What color was the circle?", max_new_tokens=2)
    assert ans.sample_fps == pytest.approx(0.5)

    env = {"VIDEOKV_HOME": str(tmp_path / "cli"), "VIDEOKV_MODEL_CACHE": str(MODEL_CACHE), "VIDEOKV_MAX_FRAMES": "48"}
    p = subprocess.run([sys.executable, "-m", "videokv.cli", "ingest", "--json", str(toy_video[0])],
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)                          # one JSON object and nothing else
    assert {"video_id", "status", "duration_s", "frames", "chunks", "sample_fps", "frames_per_s",
            "peak_rss_mb"} <= set(out)
    assert out["status"] == "READY" and out["frames"] == 48 and out["chunks"] == 3
    assert out["sample_fps"] == pytest.approx(0.5) and out["duration_s"] == pytest.approx(96, abs=0.5)
    assert out["peak_rss_mb"] > 100 and out["frames_per_s"] > 0


def test_peak_rss_is_the_process_own_not_its_parents(tmp_path):
    """`ingest --json`'s peak_rss_mb: a child started by a big process reports its own peak
    (getrusage's ru_maxrss carries the parent's across fork and exec: a bench once read 4.8 GB
    for a 1 GB ingest)."""
    import subprocess
    import sys

    import numpy as np

    from videokv.ingest.pipeline import peak_rss_mb
    ballast = np.ones(1 << 30, dtype=np.uint8)          # 1 GiB resident in this process
    assert peak_rss_mb() >= 1024
    child = subprocess.run([sys.executable, "-c", "from videokv.ingest.pipeline import peak_rss_mb; "
                            "print(peak_rss_mb())"], capture_output=True, text=True, check=True)
    assert float(child.stdout) < 512 < ballast.nbytes >> 20
