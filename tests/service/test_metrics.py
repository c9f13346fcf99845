"""Prometheus metrics of the real API, Celery worker and query worker: scraped before and
after an upload and two questions, parsed with prometheus_client's parser; every counter
moved by exactly what happened."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .conftest import auth, wait_status


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a /metrics page."""
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def moved(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_count_exactly_an_upload_and_two_questions(api, worker, query_worker, service_env, videos):
    from videokv.api.auth import KeyRing
    from videokv.kvstore import KVStore
    key = KeyRing(service_env["home"]).create("metrics")       # a tenant of its own: the upload is ingested
    urls = {"api": api.url + "/metrics", "worker": f"http://127.0.0.1:{worker.metrics_port}/metrics",
            "qworker": f"http://127.0.0.1:{query_worker.metrics_port}/metrics"}
    before = {k: scrape(u) for k, u in urls.items()}
    with httpx.Client(base_url=api.url, timeout=120) as c:
        vid = c.post("/v1/videos", headers=auth(key), files={"file": ("m.mp4", videos["b"].read_bytes())}).json()["id"]
        view = wait_status(c, vid, key, timeout=180)
        assert view["status"] == "READY"
        answers = [c.post(f"/v1/videos/{vid}/query", headers=auth(key),
                          json={"question": q, "mode": m, "max_new_tokens": 6}).json()
                   for q, m in (("What color was the first card?", "bilevel"), ("What shape came last?", "dense"))]
        assert c.get("/v1/videos/0123456789ab", headers=auth(key)).status_code == 404
    after = {k: scrape(u) for k, u in urls.items()}
    frames = KVStore(service_env["home"]).get_video(vid).sampled_frames
    a, w, q = (before["api"], after["api"]), (before["worker"], after["worker"]), (before["qworker"], after["qworker"])

    # The Celery worker: the video's frames and chunks, once.
    assert moved(*w, "videokv_ingest_chunks_total") == view["chunks_total"]
    assert moved(*w, "videokv_ingest_frames_total") == frames > 0
    # The API and the query worker: one question in each mode, their KV bytes, their times.
    paged = sum(x["kv_bytes_loaded"] for x in answers)
    for side in (a, q):
        assert moved(*side, "videokv_questions_total", mode="bilevel", status="ok") == 1
        assert moved(*side, "videokv_questions_total", mode="dense", status="ok") == 1
        assert moved(*side, "videokv_kv_bytes_paged_total") == paged > 0
        for mode in ("bilevel", "dense"):
            assert moved(*side, "videokv_ttft_seconds_count", mode=mode) == 1
            assert moved(*side, "videokv_answer_seconds_count", mode=mode) == 1
        assert 0 < moved(*side, "videokv_ttft_seconds_sum", mode="dense") <= moved(*side, "videokv_answer_seconds_sum",
                                                                                     mode="dense")
    # The hot set: the first question read it, the second found it in memory.
    assert moved(*q, "videokv_hotset_misses_total") == 1 and moved(*q, "videokv_hotset_hits_total") == 1
    # The API's 404, its videos by status and its (empty) queues.
    assert moved(*a, "videokv_errors_total", code="video_not_found") == 1
    assert moved(*a, "videokv_videos", status="READY") == 1
    for queue in ("ingest", "query", "questions"):
        assert ("videokv_queue_depth", (("queue", queue),)) in after["api"]
