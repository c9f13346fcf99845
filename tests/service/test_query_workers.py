"""Questions through the query workers (workers/query_worker.py): a real uvicorn API process, a
real `videokv query-worker` process, the real Redis. Concurrent questions decode in one
batch with the answers one-at-a-time gives; tokens stream through the worker; a worker that
dies mid-answer costs a retry or a 503, never a hang; the API holds no model."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL_CACHE, make_runtime

from .conftest import CHUNK_FRAMES, ApiServer, QueryWorkerProcess, RedisServer, auth, stop_together, wait_status

QUESTIONS = ["What digit was shown on the red card?", "What color was the first card?",
             "Which shape moved to the left?", "What happened at the end?"]


@pytest.fixture(scope="module")
def two_videos(api, keys, videos):
    ids = []
    for name in ("a", "b"):
        r = httpx.post(api.url + "/v1/videos", headers=auth(keys["acme"]),
                       files={"file": (f"qw-{name}.mp4", videos[name].read_bytes(), "video/mp4")})
        assert r.status_code in (200, 202), r.text
        ids.append(r.json()["id"])
    client = httpx.Client(base_url=api.url)
    for vid in ids:
        assert wait_status(client, vid, keys["acme"], timeout=180)["status"] == "READY"
    return ids


def ask(url: str, key: str, vid: str, q: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/videos/{vid}/query", headers=auth(key), timeout=180,
                      json={"question": q, "max_new_tokens": 12, "count_by": "lm", **body})


def test_16_concurrent_questions_match_one_at_a_time(service_env, api, keys, two_videos):
    pairs = [(vid, q) for vid in two_videos for q in QUESTIONS] * 2                # 16
    got: dict[int, httpx.Response] = {}

    def one(i, vid, q):
        got[i] = ask(api.url, keys["acme"], vid, q)

    threads = [threading.Thread(target=one, args=(i, vid, q)) for i, (vid, q) in enumerate(pairs)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    # Search while the worker decodes them: it runs on its own thread, not behind the batch.
    time.sleep(1.0)
    ts = time.monotonic()
    found = httpx.post(api.url + "/v1/search", headers=auth(keys["acme"]), timeout=60,
                       json={"query": "a red card", "top_k": 3, "video_ids": two_videos})
    search_s = time.monotonic() - ts
    for t in threads:
        t.join(240)
    finished_s = time.monotonic() - t0
    assert found.status_code == 200 and found.json()["results"], found.text
    assert search_s < finished_s / 3, (search_s, finished_s)
    assert len(got) == 16 and all(r.status_code == 200 for r in got.values()), [r.text for r in got.values()]
    # One at a time, in this process, through the embedded path (`videokv ask`: no Redis).
    rt = make_runtime(service_env["home"], chunk_frames=CHUNK_FRAMES)
    alone = {(vid, q): rt.queries.ask(vid, q, max_new_tokens=12, count_by="lm").answer for vid, q in set(pairs)}
    for i, (vid, q) in enumerate(pairs):
        assert got[i].json()["answer"] == alone[(vid, q)], (vid, q)
    # They were decoded together: the worker had several in flight (its queue time is not all).
    batched = [r.json()["timings"] for r in got.values()]
    assert any(t["decode_ms"] > 0 for t in batched)
    assert time.monotonic() - t0 < 240


def test_sse_tokens_come_through_the_worker(api, keys, two_videos):
    vid, q = two_videos[0], QUESTIONS[0]
    plain = ask(api.url, keys["acme"], vid, q).json()["answer"]
    with httpx.stream("POST", f"{api.url}/v1/videos/{vid}/query", headers=auth(keys["acme"]), timeout=120,
                      json={"question": q, "max_new_tokens": 12, "count_by": "lm", "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [(e.split("\n")[0][7:], json.loads(e.split("\n")[1][6:]))
                  for e in r.read().decode().strip().split("\n\n")]
    kinds = [k for k, _ in events]
    assert kinds[-1] == "answer" and kinds.count("token") >= 2 and set(kinds[:-1]) == {"token"}
    streamed = "".join(d["text"] for k, d in events if k == "token")
    assert streamed.strip() == events[-1][1]["answer"] == plain


def test_the_api_process_holds_no_model(api, query_worker):
    weights = str(MODEL_CACHE)

    def mapped(pid):
        return [ln for ln in Path(f"/proc/{pid}/maps").read_text().splitlines() if weights in ln]

    def rss_mb(pid):
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    assert mapped(api.proc.pid) == []
    # The worker holds it: its memory is the model's and more (the API's is not).
    model_mb = sum(p.stat().st_size for p in MODEL_CACHE.rglob("*.safetensors")) / 2 ** 20
    assert rss_mb(query_worker.proc.pid) > model_mb > rss_mb(api.proc.pid) - 300, \
        (rss_mb(query_worker.proc.pid), model_mb, rss_mb(api.proc.pid))


@pytest.fixture
def own_stack(service_env, tmp_path):
    """An API and query workers on a Redis of their own (the store is the shared one's)."""
    redis = RedisServer(tmp_path)
    redis.start()
    env = {**service_env["env"], "VIDEOKV_REDIS_URL": redis.url}
    procs = {"redis": redis, "env": env, "work": tmp_path}
    procs["api"] = ApiServer(env, tmp_path / "api.log").start()
    yield procs
    stop_together(*(p for p in procs.values() if hasattr(p, "proc")))
    redis.stop()


def test_a_worker_killed_mid_answer_is_retried_or_a_503(own_stack, keys, two_videos):
    env, work, url = own_stack["env"], own_stack["work"], own_stack["api"].url
    vid, q = two_videos[1], "Describe everything that happened in the video, in detail."
    first = own_stack["first"] = QueryWorkerProcess(env, work / "qw1.log").start()

    # Streamed, a token already out, no other worker: the stream ends with a 503 worker_lost event, in seconds.
    t0 = time.monotonic()
    with httpx.stream("POST", f"{url}/v1/videos/{vid}/query", headers=auth(keys["acme"]), timeout=60,
                      json={"question": q, "max_new_tokens": 400, "count_by": "lm", "stream": True}) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("event: token")
        first.kill()
        rest = list(lines)
    end = json.loads(next(x for x in rest[::-1] if x.startswith("data: "))[6:])
    assert end["status"] == 503 and end["code"] == "worker_lost", end
    assert time.monotonic() - t0 < 20

    # Nothing left to answer: a clear 503 at once.
    r = ask(url, keys["acme"], vid, q)
    assert r.status_code == 503 and r.json()["code"] == "no_query_worker" and r.headers["retry-after"], r.text

    # Not streamed, another worker alive: the question goes again and is answered.
    second = own_stack["second"] = QueryWorkerProcess(env, work / "qw2.log").start(wait=False)
    third = own_stack["third"] = QueryWorkerProcess(env, work / "qw3.log", max_batch=1).start(wait=False)
    second.wait(), third.wait()                     # the two load their models side by side
    out: dict = {}
    th = threading.Thread(target=lambda: out.update(r=ask(url, keys["acme"], vid, q, max_new_tokens=200)))
    th.start()
    import redis as redis_lib
    rc = redis_lib.Redis.from_url(env["VIDEOKV_REDIS_URL"])
    deadline = time.monotonic() + 30
    live = {second.proc.pid: second, third.proc.pid: third}
    busy = None
    while busy is None and time.monotonic() < deadline:        # the worker that took it (the group's
        for entry in rc.xpending_range("videokv:questions", "qworkers", min="-", max="+", count=10):
            busy = busy or live.get(_pid(rc, entry["consumer"].decode()))     # pending list; the dead
        time.sleep(0.01)                                                     # first worker's entry stays)
    assert busy is not None
    busy.kill()
    th.join(120)
    assert not th.is_alive() and out["r"].status_code == 200, out
    assert out["r"].json()["answer"]


def _pid(rc, wid):
    beat = rc.get(f"videokv:qworker:{wid}")
    return json.loads(beat)["pid"] if beat else None
