import json
import os
import signal
import subprocess
import sys
import time

import torch

from tests.conftest import MODEL_CACHE, make_runtime
from videokv.kvstore import KVStore, Status
from videokv.toyworld.synth import render_video


def cli(home, *args, **kw):
    env = dict(os.environ, VIDEOKV_HOME=str(home), VIDEOKV_MODEL_CACHE=str(MODEL_CACHE))
    return subprocess.Popen([sys.executable, "-m", "videokv.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_killed_ingest_resumes_without_recomputing(tmp_path, embedded_backend):
    video = tmp_path / "long.mp4"
    render_video(video, 3.0, 3, seed=11)                      # 180 frames -> 12 chunks
    home = tmp_path / "home"
    proc = cli(home, "ingest", "--quiet", str(video))
    store, committed, deadline = None, 0, time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (home / "kv.lmdb").exists():
            store = store or KVStore(home)
            vids = store.list_videos()
            if vids and vids[0].chunks_total:
                committed = vids[0].chunks_total - len(store.missing_chunks(vids[0].video_id))
                if committed >= 3:
                    proc.send_signal(signal.SIGKILL)
                    break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the ingest finished before it could be killed"
    rec = store.list_videos()[0]
    assert rec.status is not Status.READY
    done_before = rec.chunks_total - len(store.missing_chunks(rec.video_id))
    kept = store.read_chunk(rec.video_id, 1, "H")

    rt = make_runtime(home)
    rt.backend = embedded_backend
    calls = embedded_backend.vision_calls
    res = rt.pipeline.ingest(video)
    assert res.video_id == rec.video_id and res.status == "READY"
    assert res.resumed_from == done_before and res.chunks_prefilled == rec.chunks_total - done_before
    assert embedded_backend.vision_calls - calls == res.chunks_prefilled   # committed chunks not recomputed
    assert torch.equal(rt.store.read_chunk(rec.video_id, 1, "H").keys, kept.keys)

    # the resumed chunks equal an uninterrupted ingest of the same file
    straight = make_runtime(tmp_path / "home2")
    straight.backend = embedded_backend
    ref = straight.pipeline.ingest(video)
    last = rec.chunks_total - 1
    a = rt.store.read_chunk(rec.video_id, last, "L")
    b = straight.store.read_chunk(ref.video_id, last, "L")
    assert torch.allclose(a.keys, b.keys, atol=1e-4) and torch.allclose(a.values, b.values, atol=1e-4)


def test_cli_ingest_prints_id_last_and_ask_json(tmp_path, toy_video):
    home = tmp_path / "home"
    p = cli(home, "ingest", str(toy_video[0]))
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    vid = out.strip().splitlines()[-1]
    assert len(vid) >= 8 and " " not in vid
    assert "READY" in err and "frames/s" in err
    p = cli(home, "ask", vid, "What color was the circle?", "--json", "--top-k", "2", "--max-new-tokens", "6")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    ans = json.loads(out)
    assert {"answer", "evidence", "timings", "kv_bytes_loaded", "context_tokens", "video_prefill_runs"} <= set(ans)
    assert ans["video_prefill_runs"] == 0
    assert {"retrieve_ms", "load_ms", "prefill_ms", "decode_ms", "ttft_ms"} == set(ans["timings"])
    assert {"chunk", "t_start", "t_end", "score", "level"} == set(ans["evidence"][0])
    p = cli(home, "ask", "no-such-video", "Hello?")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2 and "no-such-video" in err and "Traceback" not in err
