import json
import os
import signal
import subprocess
import sys

import torch

from tests.conftest import MODEL_CACHE, make_runtime
from videokv.kvstore import KVStore, Status
from videokv.query.moments import iou
from videokv.toyworld.synth import render_video


def cli(home, *args, **kw):
    env = dict(os.environ, VIDEOKV_HOME=str(home), VIDEOKV_MODEL_CACHE=str(MODEL_CACHE))
    return subprocess.Popen([sys.executable, "-m", "videokv.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


# A child that ingests with groups of 4 chunks and stops INSIDE the write transaction of
# the second group, after writing two of its chunks: the parent kills it there.
IN_COMMIT = """
import sys, time
from tests.conftest import make_runtime
from videokv.kvstore import commits
write = commits._write_chunk
def slow(txn, ck, seq, idx, *a):
    write(txn, ck, seq, idx, *a)
    if idx == 5:
        print("IN_COMMIT", flush=True)
        time.sleep(120)
commits._write_chunk = slow
make_runtime(sys.argv[1], gist_chunks=4).pipeline.ingest(sys.argv[2])
"""


def test_kill_inside_a_group_commit_resumes_with_no_chunk_missing_or_duplicated(tmp_path, embedded_backend):
    video = tmp_path / "long.mp4"
    render_video(video, 3.0, 3, seed=11)                      # 180 frames -> 12 chunks, 3 groups of 4
    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-c", IN_COMMIT, str(home), str(video)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=os.getcwd(),
                            env=dict(os.environ, PYTHONPATH=os.getcwd(), VIDEOKV_KV_CODEC="none"))
    line = proc.stdout.readline()                             # blocks until the child is inside the commit
    assert line.strip() == "IN_COMMIT", proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    store = KVStore(home)
    rec = store.list_videos()[0]
    assert rec.status is Status.INGESTING and rec.chunks_expected == 12
    # the first group is there, nothing of the second (chunks 4 and 5 were written, uncommitted)
    assert [c.index for c in store.committed_chunks(rec.video_id)] == [0, 1, 2, 3] and rec.chunks_done == 4
    kept = store.read_chunk(rec.video_id, 1, "H")

    # Stored as they are (codec none): a resume is then bit for bit an uninterrupted ingest.
    # Under a lossy codec the chunks after a resume attend to their history as stored
    # (dequantized) rather than as computed: equal within the codec's bound (README).
    rt = make_runtime(home, gist_chunks=4, kv_codec="none")
    rt.backend = embedded_backend
    calls = embedded_backend.vision_calls
    res = rt.pipeline.ingest(video)
    assert res.video_id == rec.video_id and res.status == "READY"
    assert res.resumed_from == 4 and res.chunks_prefilled == 8 and res.chunks_total == 12
    assert embedded_backend.vision_calls - calls == 8          # committed chunks not recomputed
    assert torch.equal(rt.store.read_chunk(rec.video_id, 1, "H").keys, kept.keys)
    assert [c.index for c in rt.store.committed_chunks(rec.video_id)] == list(range(12))
    # each chunk indexed once: a search for everything returns every chunk exactly once
    q = rt.queries
    hits = rt.store.search(q.oracle.identity, q.question_vector(q.oracle, "a red circle"), 50,
                           video_ids=[rec.video_id])
    assert sorted(h.chunk for h in hits) == list(range(12))
    assert [g.index for g in (rt.store.read_chunk(rec.video_id, i, "G") for i in (0, 4, 8))] == [0, 4, 8]

    # the resumed chunks equal an uninterrupted ingest of the same file
    straight = make_runtime(tmp_path / "home2", gist_chunks=4, kv_codec="none")
    straight.backend = embedded_backend
    ref = straight.pipeline.ingest(video)
    for i, lvl in ((11, "L"), (8, "G")):
        a = rt.store.read_chunk(rec.video_id, i, lvl)
        b = straight.store.read_chunk(ref.video_id, i, lvl)
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
    assert ans["moments"] and {"video_id", "start", "end", "score", "source", "chunk", "text"} == set(ans["moments"][0])
    # Moments: one JSON object, best first; the event asked about is the first one.
    e = toy_video[1]["events"][0]
    what = f"the {e['color']} card" if e["kind"] == "card" else f"a {e['color']} {e['shape']}"
    for scope in ([vid], ["--all"]):
        p = cli(home, "search", *scope, what, "--json", "--limit", "2")
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        got = json.loads(out)
        assert set(got) == {"moments", "next_page_token"} and 1 <= len(got["moments"]) <= 2
        top = got["moments"][0]
        assert top["video_id"] == vid and top["source"] == "visual"
        assert iou((top["start"], top["end"]), (e["t_start"], e["t_end"])) >= 0.5, (top, e)
    p = cli(home, "search", vid, what, "--all")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2 and "VIDEO_ID or --all" in err
    p = cli(home, "ask", "no-such-video", "Hello?")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2 and "no-such-video" in err and "Traceback" not in err
