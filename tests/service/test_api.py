"""The service end to end: real Redis, a real Celery worker process, the real API."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import time

from .conftest import auth, wait_mid_ingest, wait_status

PROBLEM = "application/problem+json"


def _upload(client, key, path, name=None):
    with open(path, "rb") as f:
        return client.post("/v1/videos", headers=auth(key), files={"file": (name or path.name, f, "video/mp4")})


def _problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body = r.json()
    assert body["status"] == status and body["detail"]
    return body


def test_auth_required(svc, app_client, keys):
    _problem(app_client.get("/v1/videos"), 401)
    body = _problem(app_client.get("/v1/videos", headers=auth("vkv_nope")), 401)
    assert "invalid API key" in body["detail"]
    _problem(app_client.get("/v1/videos", headers={"Authorization": "Basic abc"}), 401)
    assert app_client.get("/v1/videos", headers=auth(keys["empty"])).json()["videos"] == []
    assert app_client.get("/healthz").json() == {"status": "ok"}
    assert "/v1/videos/{video_id}/query" in app_client.get("/openapi.json").json()["paths"]


def test_bad_requests_store_and_queue_nothing(svc, app_client, keys, videos, tmp_path):
    k = keys["empty"]
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(50_000))
    assert _problem(_upload(app_client, k, junk), 422)["code"] == "not_a_video"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    body = _problem(_upload(app_client, k, empty), 422)
    assert body["code"] == "empty_file" and "empty.mp4" in body["detail"]
    cut = tmp_path / "cut.mp4"
    data = videos["a"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert _problem(_upload(app_client, k, cut), 422)["code"] in ("truncated", "corrupt", "no_frames")
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(3 << 20))
    assert _problem(_upload(app_client, k, big), 413)["code"] == "too_large"
    _problem(app_client.post("/v1/videos", headers=auth(k), content=b"x", ), 415)
    _problem(app_client.post("/v1/videos", headers=auth(k), files={"other": ("a.mp4", b"123")}), 422)
    # Bodies and ids.
    _problem(app_client.get("/v1/videos/nosuchvideo", headers=auth(k)), 404)
    q = "/v1/videos/nosuchvideo/query"
    _problem(app_client.post(q, headers={**auth(k), "content-type": "application/json"}, content=b"{nope"), 422)
    _problem(app_client.post(q, headers=auth(k), json={"question": "hi", "top_k": 0}), 422)
    _problem(app_client.post(q, headers=auth(k), json={"question": "hi", "top_k": 10**6}), 422)
    _problem(app_client.post(q, headers=auth(k), json={"question": "x" * 100_000}), 422)
    _problem(app_client.post(q, headers=auth(k), json={"question": "hi"}), 404)
    _problem(app_client.post("/v1/search", headers=auth(k), json={"query": ""}), 422)
    _problem(app_client.post("/v1/jobs", headers=auth(k), json={"video_ids": ["nosuch"], "questions": ["a"]}), 422)
    _problem(app_client.post("/v1/jobs", headers=auth(k), json={"video_ids": ["0" * 12], "questions": ["a"]}), 404)
    # Nothing stored, nothing queued, no upload left behind.
    assert app_client.get("/v1/videos", headers=auth(k)).json()["videos"] == []
    assert svc["redis"].client().llen("ingest") == 0
    tmp = svc["home"] / "uploads" / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir())


def test_upload_ready_query_search_jobs_delete(svc, worker, app_client, keys, videos):
    ka, kb = keys["acme"], keys["globex"]
    r = _upload(app_client, ka, videos["a"])
    assert r.status_code == 202, r.text
    va = r.json()
    assert va["status"] in ("QUEUED", "INGESTING") and va["status_url"] == f"/v1/videos/{va['id']}"
    r = _upload(app_client, ka, videos["b"])
    assert r.status_code == 202, r.text
    vb = r.json()

    # Server-sent progress events until READY.
    events = []
    with app_client.stream("GET", f"/v1/videos/{va['id']}/events", headers=auth(ka)) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        for line in s.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
    assert events[-1] == "ready" and "progress" in events
    a = wait_status(app_client, va["id"], ka)
    assert a["status"] == "READY", a
    assert a["chunks_done"] == a["chunks_total"] >= 4 and a["progress"] == 1.0 and a["duration"] > 25
    assert wait_status(app_client, vb["id"], ka)["status"] == "READY"

    # Same file again: the same video, no second ingest.
    r = _upload(app_client, ka, videos["a"], name="again.mp4")
    assert r.status_code == 200 and r.json()["id"] == va["id"] and r.json()["deduplicated"]
    assert svc["redis"].client().llen("ingest") == 0

    # Questions from the stored cache: evidence, no video prefill, twice.
    for _ in range(2):
        r = app_client.post(f"/v1/videos/{va['id']}/query", headers=auth(ka),
                            json={"question": "What color is the ball?", "top_k": 2, "max_new_tokens": 8})
        assert r.status_code == 200, r.text
        ans = r.json()
        assert ans["video_prefill_runs"] == 0 and ans["evidence"] and ans["video_id"] == va["id"]
        assert isinstance(ans["answer"], str) and ans["timings"]["ttft_ms"] > 0
    # Streaming tokens.
    kinds = []
    with app_client.stream("POST", f"/v1/videos/{va['id']}/query", headers=auth(ka),
                           json={"question": "What happens?", "max_new_tokens": 4, "stream": True}) as s:
        for line in s.iter_lines():
            if line.startswith("event: "):
                kinds.append(line[7:])
    assert kinds[-1] == "answer" and set(kinds[:-1]) <= {"token"}

    # Search across both videos.
    r = app_client.post("/v1/search", headers=auth(ka), json={"query": "a red ball", "top_k": 20})
    hits = r.json()["results"]
    assert {h["video_id"] for h in hits} == {va["id"], vb["id"]}
    assert all(h["t_end"] > h["t_start"] for h in hits)
    # ... as moments, a page at a time: the pages together are the whole list, without repeats.
    body = {"query": "a red ball", "limit": 1}
    first = app_client.post("/v1/search", headers=auth(ka), json=body).json()
    assert first["moments"] and first["next_page_token"], first
    seen, page = [], first
    while True:
        seen += [(m["video_id"], m["start"], m["source"]) for m in page["moments"]]
        if not page["next_page_token"]:
            break
        page = app_client.post("/v1/search", headers=auth(ka), json={**body, "page_token": page["next_page_token"]}).json()
    whole = app_client.post("/v1/search", headers=auth(ka), json={**body, "limit": 1000}).json()["moments"]
    assert seen == [(m["video_id"], m["start"], m["source"]) for m in whole] and len(set(seen)) == len(seen)
    assert all(m["end"] > m["start"] and m["source"] == "visual" for m in whole)
    assert [m["score"] for m in whole] == sorted((m["score"] for m in whole), reverse=True)
    floor = whole[len(whole) // 2]["score"]
    high = app_client.post("/v1/search", headers=auth(ka), json={**body, "limit": 1000, "min_score": floor}).json()
    assert high["moments"] and all(m["score"] >= floor for m in high["moments"])
    _problem(app_client.post("/v1/search", headers=auth(ka), json={"query": "a blue ball",
                                                                    "page_token": first["next_page_token"]}), 400)
    thumb = whole[0]["thumbnail_url"]
    r = app_client.get(thumb, headers=auth(ka))
    assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"
    _problem(app_client.get(thumb, headers=auth(kb)), 404)     # another tenant's moment is no such video

    # Evidence preview.
    r = app_client.get(f"/v1/videos/{va['id']}/frame", params={"t": 3.0}, headers=auth(ka))
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    _problem(app_client.get(f"/v1/videos/{va['id']}/frame", params={"t": 1e6}, headers=auth(ka)), 422)

    # Tenant isolation: globex sees none of acme's videos.
    for method, url, kw in (("GET", f"/v1/videos/{va['id']}", {}), ("DELETE", f"/v1/videos/{va['id']}", {}),
                            ("GET", f"/v1/videos/{va['id']}/frame?t=1", {}),
                            ("POST", f"/v1/videos/{va['id']}/query", {"json": {"question": "hi"}}),
                            ("POST", "/v1/search", {"json": {"query": "ball", "video_ids": [va["id"]]}}),
                            ("POST", "/v1/jobs", {"json": {"video_ids": [va["id"]], "questions": ["hi"]}})):
        _problem(app_client.request(method, url, headers=auth(kb), **kw), 404)
    assert app_client.get("/v1/videos", headers=auth(kb)).json()["videos"] == []
    nothing = app_client.post("/v1/search", headers=auth(kb), json={"query": "ball", "top_k": 50, "limit": 50}).json()
    assert nothing["results"] == [] and nothing["moments"] == [] and nothing["next_page_token"] is None

    # Batch job: 2 videos x 3 questions on the worker.
    qs = ["What color is the ball?", "What happens at the start?", "How many objects are there?"]
    r = app_client.post("/v1/jobs", headers=auth(ka), json={"video_ids": [va["id"], vb["id"]], "questions": qs,
                                                             "max_new_tokens": 6})
    assert r.status_code == 202, r.text
    job = r.json()
    deadline = time.monotonic() + 90
    while (j := app_client.get(job["status_url"], headers=auth(ka)).json())["status"] != "DONE":
        assert time.monotonic() < deadline, j
        time.sleep(0.3)
    assert j["done"] == j["total"] == 6 and j["errors"] == 0
    _problem(app_client.get(job["status_url"], headers=auth(kb)), 404)
    rows = [json.loads(x) for x in app_client.get(job["results_url"], headers=auth(ka)).text.splitlines()]
    assert sorted((r["video_id"], r["question_index"]) for r in rows) == sorted(
        (v, i) for v in (va["id"], vb["id"]) for i in range(3))
    assert all(r["evidence"] and r["video_prefill_runs"] == 0 and not r["error"] for r in rows)
    r = app_client.get(job["results_url"], params={"format": "csv"}, headers=auth(ka))
    assert r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert len(table) == 6 and {t["question"] for t in table} == set(qs)

    # Delete frees the video.
    assert app_client.delete(f"/v1/videos/{vb['id']}", headers=auth(ka)).status_code == 204
    _problem(app_client.get(f"/v1/videos/{vb['id']}", headers=auth(ka)), 404)
    assert not (svc["home"] / "uploads" / vb["id"]).exists()
    hits = app_client.post("/v1/search", headers=auth(ka), json={"query": "ball", "top_k": 50}).json()["results"]
    assert hits and {h["video_id"] for h in hits} == {va["id"]}
    assert app_client.get("/readyz").status_code == 200


def test_worker_sigkill_mid_ingest_resumes(svc, worker, app_client, keys, tmp_path):
    """The process running the ingest is SIGKILLed after some chunks committed: the task is
    re-delivered (acks_late + reject_on_worker_lost) to a new worker process, which resumes
    at the first missing chunk: committed chunks are neither recomputed nor duplicated."""
    from videokv.toyworld.synth import render_video

    path = tmp_path / "long.mp4"
    render_video(path, 1.0, 2, 7, size=(160, 120))
    k = keys["acme"]
    r = _upload(app_client, k, path)
    assert r.status_code == 202, r.text
    vid = r.json()["id"]
    store = app_client.app.state.service.rt.store
    wait_mid_ingest(store, vid, min_done=2, timeout=60)
    victims = worker.children()
    assert len(victims) == 1
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    done_at_kill = store.get_video(vid).chunks_done
    v = wait_status(app_client, vid, k, timeout=120)
    assert v["status"] == "READY", v
    assert worker.children() and worker.children() != victims
    records = store.chunk_records(vid)
    idx = [c.index for c in records]
    assert idx == list(range(-1, v["chunks_total"])), idx            # each chunk once
    before = [c for c in records if c.created < killed_at]
    after = [c for c in records if c.created >= killed_at]
    assert len([c for c in before if c.index >= 0]) >= done_at_kill >= 2   # kept, not recomputed
    assert after, "nothing was computed after the kill"
    assert min(c.index for c in after) >= done_at_kill - 1  # at most the chunk in flight at the kill
    r = app_client.post(f"/v1/videos/{vid}/query", headers=auth(k), json={"question": "What moved?", "max_new_tokens": 4})
    assert r.status_code == 200 and r.json()["video_prefill_runs"] == 0
