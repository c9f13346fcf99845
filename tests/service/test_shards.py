"""Two shards on one machine, as two hosts would run them: each its own home, shard API,
Celery worker and query worker; one Redis; a front API whose home holds no KV (only the API
keys). Uploads spread over both shards, every endpoint answers for every video through the
front, tenants stay apart across shards; a shard killed with SIGKILL costs only its own
videos (503 naming it) and its queued work runs, once, when it comes back."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from .conftest import (
    CHUNK_FRAMES,
    ApiServer,
    QueryWorkerProcess,
    RedisServer,
    Worker,
    auth,
    service_process_env,
    stop_together,
)

TOKEN = "cluster-secret-for-tests"
QUESTIONS = ["What color was the first card?", "What happened at the end?"]


class Shard:
    """One shard's processes (API, Celery worker, query worker) over its own home."""

    def __init__(self, name: str, work: Path, redis_url: str):
        self.name, self.work = name, work
        self.env = service_process_env(work / f"home-{name}", redis_url, chunk_frames=CHUNK_FRAMES, shard=name,
                                       cluster_token=TOKEN)
        self.api = None

    def start(self, wait: bool = True) -> "Shard":
        self.api = ApiServer(self.env, self.work / f"api-{self.name}.log")
        self.env["VIDEOKV_SHARD_URL"] = self.api.url
        self.api.start(wait=False)
        self.worker = Worker(self.env, self.work / f"worker-{self.name}.log",
                             queues=f"ingest.{self.name},query.{self.name}").start()
        self.qworker = QueryWorkerProcess(self.env, self.work / f"qworker-{self.name}.log").start(wait=False)
        return self.wait() if wait else self

    def wait(self) -> "Shard":
        self.api.wait()
        self.qworker.wait()
        return self

    def kill(self) -> None:
        """SIGKILL every process of the shard, as a host that loses power."""
        for pid in self.worker.children():
            os.kill(pid, signal.SIGKILL)
        for proc in (self.api.proc, self.worker.proc, self.qworker.proc):
            proc.kill()
            proc.wait(10)

    @property
    def processes(self) -> list:
        return [self.api, self.qworker, self.worker]

    def stop(self) -> None:
        stop_together(*self.processes)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("shards")
    redis = RedisServer(work)
    redis.start()
    shards = {n: Shard(n, work, redis.url).start(wait=False) for n in ("a", "b")}
    front_env = service_process_env(work / "home-front", redis.url, cluster_token=TOKEN, shard_timeout_s=3)
    front = ApiServer(front_env, work / "front.log", factory="videokv.services:front_app").start()
    for s in shards.values():
        s.wait()
    from videokv.api.auth import KeyRing
    ring = KeyRing(work / "home-front")
    keys = {"acme": ring.create("acme"), "globex": ring.create("globex")}
    yield {"front": front, "shards": shards, "keys": keys, "work": work, "redis": redis}
    stop_together(front, *(p for s in shards.values() for p in s.processes))
    redis.stop()


def placement(path: Path) -> str:
    """Where the front places these bytes: rendezvous over a and b of the SHA-256 of their
    first 4 MiB (api/front/upload.py)."""
    import hashlib

    from videokv.api.front.upload import PLACEMENT_BYTES
    from videokv.workers.shards import rendezvous
    return rendezvous(hashlib.sha256(path.read_bytes()[:PLACEMENT_BYTES]).hexdigest(), ["a", "b"])[0]


@pytest.fixture(scope="module")
def uploaded(cluster, tmp_path_factory):
    """Three videos per tenant through the front, all READY: {tenant: {video id: shard}}, and
    their files under "paths". The videos are picked (encoders differ between machines, so
    their bytes may) so that both shards hold some and acme has videos on both."""
    from videokv.toyworld.synth import render_video
    d = tmp_path_factory.mktemp("shard-videos")
    front, keys = cluster["front"], cluster["keys"]
    by_shard: dict[str, list[Path]] = {"a": [], "b": []}
    for seed in range(100, 140):
        path = d / f"v{seed}.mp4"
        render_video(path, 0.1, 1, seed=seed)
        by_shard[placement(path)].append(path)
        if len(by_shard["a"]) >= 2 and len(by_shard["b"]) >= 2 and sum(map(len, by_shard.values())) >= 6:
            break
    one_each = [by_shard["a"].pop(0), by_shard["b"].pop(0)]
    rest = by_shard["a"] + by_shard["b"]
    chosen = {"acme": one_each + rest[:1], "globex": rest[1:4]}
    out, paths = {"acme": {}, "globex": {}}, {}
    c = httpx.Client(base_url=front.url, timeout=60)
    for tenant, files in chosen.items():
        for path in files:
            r = c.post("/v1/videos", headers=auth(keys[tenant]), files={"file": (path.name, path.read_bytes())})
            assert r.status_code == 202, r.text
            assert r.json()["shard"] == placement(path)                # the placement rule, exactly
            out[tenant][r.json()["id"]] = r.json()["shard"]
            paths[r.json()["id"]] = path
    deadline = time.monotonic() + 180
    for tenant, vids in out.items():
        for vid in vids:
            while (v := c.get(f"/v1/videos/{vid}", headers=auth(keys[tenant]))).json()["status"] != "READY":
                assert v.json()["status"] != "FAILED" and time.monotonic() < deadline, v.json()
                time.sleep(0.3)
    return {**out, "paths": paths}


def test_two_shards_serve_every_endpoint_and_keep_tenants_apart(cluster, uploaded):
    front, keys = cluster["front"], cluster["keys"]
    c = httpx.Client(base_url=front.url, timeout=120)
    paths = uploaded.pop("paths")
    placed = {vid: shard for vids in uploaded.values() for vid, shard in vids.items()}
    assert set(placed.values()) == {"a", "b"}, placed                     # both shards hold some
    # The front's home holds no KV and no upload (they stream through): only its keys.
    assert sorted(p.name for p in (cluster["work"] / "home-front").rglob("*") if p.is_file()) == [
        "api_keys.json", "api_keys.lock"]
    # Every process of both shards heartbeats in the registry the front reads.
    ready = c.get("/readyz").json()
    assert ready["status"] == "ok" and {s["name"]: (s["status"], s["api"], s["workers"], s["query_workers"])
                                        for s in ready["shards"]} == {"a": ("up", 1, 1, 1), "b": ("up", 1, 1, 1)}
    spans = [t for t, vids in uploaded.items() if set(vids.values()) == {"a", "b"}]
    assert spans, uploaded                                                 # a tenant on both shards
    for tenant, vids in uploaded.items():
        other = keys["globex" if tenant == "acme" else "acme"]
        h = auth(keys[tenant])
        listed = c.get("/v1/videos", headers=h).json()
        assert {v["id"]: v["shard"] for v in listed["videos"]} == vids and listed["missing_shards"] == []
        for vid, shard in vids.items():
            assert c.get(f"/v1/videos/{vid}", headers=h).json()["shard"] == shard
            assert c.get(f"/v1/videos/{vid}/transcript", headers=h).status_code == 200
            frame = c.get(f"/v1/videos/{vid}/frame", params={"t": 1.0, "max_side": 64}, headers=h)
            assert frame.status_code == 200 and frame.content[:2] == b"\xff\xd8"
            ev = c.get(f"/v1/videos/{vid}/events", headers=h)
            assert ev.status_code == 200 and "event: ready" in ev.text
            ans = c.post(f"/v1/videos/{vid}/query", headers=h,
                         json={"question": QUESTIONS[0], "max_new_tokens": 6, "count_by": "lm"})
            assert ans.status_code == 200 and ans.json()["answer"], ans.text
            for path in ("", "/transcript", "/events", "/frame?t=1"):      # never another tenant's
                assert c.get(f"/v1/videos/{vid}{path}", headers=auth(other)).status_code == 404
            assert c.post(f"/v1/videos/{vid}/query", headers=auth(other), json={"question": "?"}).status_code == 404
            assert c.delete(f"/v1/videos/{vid}", headers=auth(other)).status_code == 404
        found = c.post("/v1/search", headers=h, json={"query": "a red card", "top_k": 100}).json()
        assert found["missing_shards"] == [] and found["results"]
        assert {x["video_id"] for x in found["results"]} == set(vids)      # all its videos, none other
        assert {x["shard"] for x in found["results"]} == set(vids.values())
        # Moments merged across the shards, paged by the front: two pages tile the whole list.
        # A shard slower than the front's 3-s deadline (a loaded CI machine) is reported
        # missing, and a partial page cannot tile: such a page is asked again.
        def page(**extra):
            for _ in range(5):
                got = c.post("/v1/search", headers=h, json={"query": "a red card", **extra}).json()
                if not got["missing_shards"]:
                    return got
            raise AssertionError(f"a shard stayed missing: {got['missing_shards']}")
        whole = page(limit=1000)["moments"]
        assert {m["video_id"] for m in whole} == set(vids) and {m["shard"] for m in whole} == set(vids.values())
        one = page(limit=2)
        assert bool(one["next_page_token"]) == (len(whole) > 2), (one, len(whole))
        rest = page(limit=998, page_token=one["next_page_token"])
        assert [(m["video_id"], m["start"]) for m in one["moments"] + rest["moments"]] == \
            [(m["video_id"], m["start"]) for m in whole] and rest["next_page_token"] is None
    # Streamed through the front: token events, then the answer.
    tenant = spans[0]
    vid = next(iter(uploaded[tenant]))
    with c.stream("POST", f"/v1/videos/{vid}/query", headers=auth(keys[tenant]),
                  json={"question": QUESTIONS[1], "max_new_tokens": 6, "stream": True}) as s:
        text = "".join(s.iter_text())
    assert s.headers["content-type"].startswith("text/event-stream")
    assert "event: token" in text and "event: answer" in text
    # A batch job over both shards completes, every row once.
    job = _run_job(c, keys[tenant], list(uploaded[tenant]))
    assert job["status"] == "DONE" and set(job["shards"]) == {"a", "b"}, job
    rows = c.get(job["results_url"], headers=auth(keys[tenant])).text.splitlines()
    assert len(rows) == len(uploaded[tenant]) * len(QUESTIONS)
    csv_rows = c.get(job["results_url"], params={"format": "csv"}, headers=auth(keys[tenant])).text.splitlines()
    assert len(csv_rows) == 1 + len(rows)
    # Bad uploads are refused with the single host's problems (the front's or the shard's).
    h = auth(keys[tenant])
    assert c.post("/v1/videos", headers=h, content=b"x").status_code == 415
    assert c.post("/v1/videos", headers=h, files={"ocr": (None, "true")}).json()["code"] == "no_file"
    junk = c.post("/v1/videos", headers=h, files={"file": ("junk.mp4", b"not a video" * 100)})
    assert junk.status_code == 422 and junk.json()["code"] == "not_a_video", junk.text
    assert c.post("/v1/videos", files={"file": ("a.mp4", b"x")}).status_code == 401
    # Re-uploading the same bytes finds the same video on the same shard.
    again = c.post("/v1/videos", headers=auth(keys[tenant]), files={"file": ("again.mp4", paths[vid].read_bytes())})
    assert again.status_code == 200 and again.json()["id"] == vid and again.json()["shard"] == placed[vid]


def test_the_shards_bench_measures_ingest_and_the_uploads_cost(cluster, uploaded, tmp_path):
    """bench/_shards.py's measurements over this cluster (the bench starts its own, one per
    phase: too slow for the suite): videos/min through the front and where they went, the
    upload's seconds straight to a shard and through the front, the table and the picture."""
    from videokv.bench._shards import ingest_rate, make_big_video, markdown, plot, upload_cost
    from videokv.toyworld.synth import render_video
    front, keys, shards = cluster["front"], cluster["keys"], cluster["shards"]
    c = {"url": front.url, "front": front.proc, "shards": {n: {"url": s.api.url} for n, s in shards.items()}}
    h = auth(keys["acme"])
    paths = [tmp_path / f"bench{i}.mp4" for i in range(2)]
    for i, p in enumerate(paths):
        render_video(p, 0.05, 1, seed=700 + i)
    with httpx.Client(timeout=120) as client:
        rate = ingest_rate(client, c, paths, 120, auth=h)
        big = tmp_path / "big.avi"
        make_big_video(big, 8)
        cost = upload_cost(client, c, big, 1, token=TOKEN, tenant="acme", auth=h)
    assert rate["videos"] == 2 and rate["videos_per_min"] > 0 and sum(rate["per_shard"].values()) == 2
    assert cost["bytes"] > 8e6 and cost["direct_s"] > 0 and cost["front_s"] > 0 and cost["front_peak_rss_mb"] > 0
    result = {"phases": {"2": {**rate, "shards": 2, "worker_processes": 2}}, "ratio": 1.0, "upload": cost,
              "config": {"shards": 2}}
    assert "| 2 | 2 | 2 |" in markdown(result) and "through the front" in markdown(result)
    plot(result, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 0
    # The big upload is a video of acme's now, on the shard its bytes hash to (deleted: the
    # next test counts acme's videos).
    for vid in [v["id"] for v in httpx.get(front.url + "/v1/videos", headers=h).json()["videos"]
                if v["id"] not in uploaded["acme"]]:
        assert httpx.delete(f"{front.url}/v1/videos/{vid}", headers=h).status_code == 204


def _run_job(c, key, vids, until=lambda job: job["status"] in ("DONE", "FAILED", "CANCELLED"),
             timeout=120) -> dict:
    r = c.post("/v1/jobs", headers=auth(key), json={"video_ids": vids, "questions": QUESTIONS,
                                                    "max_new_tokens": 6, "count_by": "lm"})
    assert r.status_code == 202, r.text
    return _wait_job(c, key, r.json()["status_url"], until, timeout)


def _wait_job(c, key, url, until, timeout) -> dict:
    deadline = time.monotonic() + timeout
    while not until(job := c.get(url, headers=auth(key)).json()):
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    return job


def test_a_dead_shard_is_503_for_its_videos_only_and_its_queued_job_runs_when_it_returns(cluster, uploaded):
    front, keys, shards = cluster["front"], cluster["keys"], cluster["shards"]
    c = httpx.Client(base_url=front.url, timeout=120)
    tenant = next(t for t, vids in uploaded.items() if set(vids.values()) == {"a", "b"})
    h = auth(keys[tenant])
    on = {s: [v for v, sh in uploaded[tenant].items() if sh == s] for s in ("a", "b")}
    shards["b"].kill()
    t0 = time.monotonic()
    while (r := c.get(f"/v1/videos/{on['b'][0]}", headers=h)).status_code != 503:
        assert time.monotonic() - t0 < 5, r.text
        time.sleep(0.1)
    assert time.monotonic() - t0 < 5
    p = r.json()
    assert p["code"] == "shard_unavailable" and p["shard"] == "b" and "'b'" in p["detail"]
    assert int(r.headers["retry-after"]) > 0
    print(f"shard b's video: 503 after {time.monotonic() - t0:.2f} s")
    assert c.post(f"/v1/videos/{on['b'][0]}/query", headers=h, json={"question": QUESTIONS[0]}).status_code == 503
    # The registry sees B go within its heartbeat TTL.
    while {s["name"]: s["status"] for s in c.get("/readyz").json()["shards"]}.get("b") != "down":
        assert time.monotonic() - t0 < 10
        time.sleep(0.2)
    # Shard A answers as before.
    ans = c.post(f"/v1/videos/{on['a'][0]}/query", headers=h,
                 json={"question": QUESTIONS[0], "max_new_tokens": 6, "count_by": "lm"})
    assert ans.status_code == 200 and ans.json()["answer"]
    listed = c.get("/v1/videos", headers=h).json()
    assert listed["missing_shards"] == ["b"] and {v["id"] for v in listed["videos"]} == set(on["a"])
    found = c.post("/v1/search", headers=h, json={"query": "a red card", "top_k": 100}).json()
    assert found["missing_shards"] == ["b"] and {x["video_id"] for x in found["results"]} == set(on["a"])
    # A job over both shards while B is down: A's part runs, B's waits on B's queue.
    job = _run_job(c, keys[tenant], on["a"] + on["b"], until=lambda j: j["shards"]["a"]["status"] == "DONE",
                   timeout=60)
    assert job["status"] == "WAITING" and job["shards"]["b"]["status"] == "UNAVAILABLE" and "'b'" in job["error"]
    assert c.get(job["results_url"], headers=h).status_code == 503
    # B comes back: its part runs, every row exactly once.
    shards["b"].start()
    done = _wait_job(c, keys[tenant], job["status_url"], lambda j: j["status"] in ("DONE", "FAILED"), 120)
    assert done["status"] == "DONE", done
    rows = [httpx.Response(200, content=line).json()
            for line in c.get(job["results_url"], headers=h).text.splitlines()]
    keys_seen = [(r["video_id"], r["question_index"]) for r in rows]
    assert sorted(keys_seen) == sorted((v, q) for v in on["a"] + on["b"] for q in range(len(QUESTIONS)))
    assert all(r["answer"] and not r["error"] for r in rows), rows
    assert c.get(f"/v1/videos/{on['b'][0]}", headers=h).json()["status"] == "READY"
    # Deletion through the front, on either shard.
    for vid in (on["a"][0], on["b"][0]):
        assert c.delete(f"/v1/videos/{vid}", headers=h).status_code == 204
        assert c.get(f"/v1/videos/{vid}", headers=h).status_code == 404
    assert {v["id"] for v in c.get("/v1/videos", headers=h).json()["videos"]} == set(on["a"][1:] + on["b"][1:])


def test_placement_keeps_content_on_its_shard_and_moves_about_1_in_n_when_a_shard_is_added():
    from videokv.workers.shards import rendezvous
    contents = [f"{i:064x}" for i in range(3000)]
    three = {c: rendezvous(c, ["a", "b", "c"])[0] for c in contents}
    assert three == {c: rendezvous(c, ["c", "a", "b"])[0] for c in contents}       # order of shards: no matter
    counts = [sum(1 for s in three.values() if s == n) for n in "abc"]
    assert min(counts) > 850, counts                                                # spread evenly
    four = {c: rendezvous(c, ["a", "b", "c", "d"])[0] for c in contents}
    moved = [c for c in contents if four[c] != three[c]]
    assert all(four[c] == "d" for c in moved)                                      # only to the new shard
    assert 0.2 < len(moved) / len(contents) < 0.3, len(moved)                      # about 1/4
    # A shard down: its contents go to their next shard, the others stay.
    two = {c: rendezvous(c, ["a", "b"])[0] for c in contents}
    assert all(two[c] == three[c] for c in contents if three[c] != "c")


def test_a_bad_shard_name_is_a_sentence_and_exit_2(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT
    r = subprocess.run([sys.executable, "-m", "videokv.cli", "worker", "--shard", "Bad Name"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "VIDEOKV_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "VIDEOKV_SHARD='Bad Name'" in r.stderr, r.stderr


def test_a_front_job_is_final_only_when_every_part_is():
    from videokv.api.front.jobs import _status
    assert _status("", {"DONE"}) == "DONE"
    assert _status("", {"DONE", "FAILED"}) == "FAILED"
    assert _status("", {"FAILED", "RUNNING"}) == "RUNNING"           # not final while a part runs
    assert _status("", {"DONE", "UNAVAILABLE"}) == "WAITING"
    assert _status("", {"QUEUED"}) == "QUEUED"
    assert _status("CANCELLED", {"DONE", "UNAVAILABLE"}) == "CANCELLED"
    assert _status("CANCELLED", {"DONE"}) == "DONE"                   # it ended before the cancel


def test_placement_reads_the_file_parts_first_bytes_whatever_the_blocks():
    import hashlib

    from videokv.api.front.upload import PrefixPeek
    data = bytes(range(256)) * 40_000                                 # 10 MB
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"ocr\"\r\n\r\ntrue\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"v.mp4\"\r\n\r\n" + data +
            b"\r\n--XyZ--\r\n")
    for block in (1 << 20, 4093, 7):
        peek = PrefixPeek(b"XyZ", need=1 << 20)
        for at in range(0, len(body), block):
            peek.write(body[at:at + block])
            if peek.done:
                break
        assert peek.found and hashlib.sha256(peek.prefix).digest() == hashlib.sha256(data[:1 << 20]).digest()
    small = PrefixPeek(b"XyZ", need=1 << 20)
    small.write(body.replace(data, b"tiny"))
    assert small.done and bytes(small.prefix) == b"tiny"
