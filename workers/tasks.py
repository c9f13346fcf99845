"""Celery tasks. They call the ingest pipeline and the query engine; no pipeline logic here.

- `ingest_video(video_id)`: the record (created by the API at upload, with the file's path
  in `extra["path"]`) is ingested; idempotent and resumable (the pipeline skips chunks
  already committed; `put_chunk` updates `chunks_done` in the catalog). A user error in the
  file (VideoError, ...) -> FAILED with its message, no retry; anything else is retried with
  exponential backoff, then FAILED with the last error.
- `run_job(job_id[, spec])`: a batch of videos x questions; rows appended to HOME/jobs/ID.jsonl,
  progress in HOME/jobs/ID.json; a re-delivered job skips rows already written. With a spec:
  a shard's part of a front API job, created here on first delivery.
- `reindex()`: rebuild and snapshot the FAISS index of this runtime's oracle.
"""

from __future__ import annotations

import errno
import logging
import time

from celery import shared_task
from celery.signals import worker_ready

from videokv.errors import VideoKVError
from videokv.kvstore import Status, VideoNotFoundError
from videokv.kvstore.errors import IllegalTransition

from . import jobs as J
from .app import runtime
from .leases import Leases, start_reaper
from .metrics import ingest_metrics
from .questions import QuestionClient, QuestionFailed
from .shards import Heartbeat, Names, front_job_key

log = logging.getLogger("videokv.workers")


def _permanent(e: BaseException) -> bool:
    """A user error (bad file, bad question): retrying cannot help."""
    return isinstance(e, VideoKVError) and e.http_status < 500


def _fail(video_id: str, reason: str) -> None:
    ingest_metrics().errors.labels("ingest_failed").inc()
    store = runtime().store
    for attempt in (1, 2):
        try:
            store.set_status(video_id, Status.FAILED, reason=reason)
            return
        except (VideoNotFoundError, IllegalTransition):   # deleted, or READY meanwhile: nothing to mark
            return
        except Exception as e:
            # The disk is full even for the status: give up the store's space reserve, once.
            if attempt == 2 or not _disk_full(e) or not store.release_reserve():
                raise


@shared_task(bind=True, name="videokv.ingest_video", max_retries=None)
def ingest_video(self, video_id: str) -> dict:
    """Ingest under a lease (workers/leases.py): a second delivery of the same video while a
    live worker holds it does nothing."""
    rt = runtime()
    leases = Leases(rt.settings.redis_url, rt.settings.lease_ttl_s, names=Names(rt.settings.shard))
    with leases.hold(video_id) as held:
        if not held:
            return {"video_id": video_id, "status": "INGESTING", "note": "another worker holds its lease"}
        result = _ingest(self, rt, video_id)
    if result["status"] in ("READY", "FAILED", "DELETED"):
        leases.finished(video_id)
    return result


def _ingest(task, rt, video_id: str) -> dict:
    store = rt.store
    store.ensure_reserve()
    try:
        rec = store.get_video(video_id)
    except VideoNotFoundError:
        return {"video_id": video_id, "status": "DELETED"}
    if rec.status is Status.READY:
        return {"video_id": video_id, "status": "READY", "chunks_prefilled": 0}
    path = (rec.extra or {}).get("path")
    if not path:
        _fail(video_id, "the uploaded file of this video is missing: upload it again")
        return {"video_id": video_id, "status": "FAILED"}
    text = (rec.extra or {}).get("text_options") or {}
    opts = rt.text_defaults.overridden(**{k: text.get(k) for k in ("ocr", "asr", "subtitles", "subtitle_file")})
    try:
        res = rt.pipeline.ingest_video(video_id, path, text=opts)
    except VideoNotFoundError:
        log.info("video %s was deleted while ingesting", video_id)
        return {"video_id": video_id, "status": "DELETED"}
    except Exception as e:
        if _permanent(e):
            _fail(video_id, str(e))
            return {"video_id": video_id, "status": "FAILED", "reason": str(e)}
        why = _why(e)
        attempts = task.request.retries + 1
        limit = rt.settings.ingest_max_retries
        if attempts > limit:
            _fail(video_id, f"ingest failed {attempts} times; last error: {why}")
            return {"video_id": video_id, "status": "FAILED", "reason": why}
        log.warning("ingest of %s failed (%s); retry %d/%d", video_id, why, attempts, limit)
        try:
            store.set_status(video_id, Status.QUEUED, reason=f"retrying after {why}")
        except VideoNotFoundError:
            return {"video_id": video_id, "status": "DELETED"}
        raise task.retry(exc=e, countdown=min(2 ** attempts, 60))
    counted = ingest_metrics()
    counted.frames.inc(res.frames_prefilled)
    counted.chunks.inc(res.chunks_prefilled)
    return dict(res.__dict__)


def _disk_full(e: BaseException | None) -> bool:
    while e is not None:
        if (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _why(e: BaseException) -> str:
    """An error as the video's status says it: a full disk in a sentence an operator acts on."""
    if _disk_full(e):
        return "the server ran out of disk space under VIDEOKV_HOME: free some, then upload the file again"
    return f"{type(e).__name__}: {e}"


@worker_ready.connect
def _start_lease_reaper(sender=None, **_) -> None:
    """Each worker re-queues the ingests whose worker died (its lease lapsed): at start, then
    every few seconds (workers/leases.py). A shard's worker also heartbeats in the shard
    registry (workers/shards.py) and re-queues only its shard's videos."""
    app = sender.app
    settings = runtime().settings
    start_reaper(Leases(settings.redis_url, settings.lease_ttl_s, names=Names(settings.shard)),
                 lambda vid: app.send_task("videokv.ingest_video", args=[vid]))
    if settings.shard:
        import redis
        Heartbeat(redis.Redis.from_url(settings.redis_url, socket_timeout=5), settings.shard, "worker").start()


def _row(video_id: str, qi: int, question: str, **fields) -> dict:
    return {"video_id": video_id, "question_index": qi, "question": question, "answer": "", "evidence": [],
            "timings": {}, "kv_bytes_loaded": 0, "video_prefill_runs": 0, "error": "", **fields}


# A job answers for at most this long before it puts itself back at the end of its queue:
# an ingest queued behind a long job waits one slice, not the whole job (a 150-question job
# once held back a 13 s ingest for 243 s on the documented single worker).
JOB_SLICE_S = 5.0


@shared_task(bind=True, name="videokv.run_job", max_retries=None)
def run_job(self, job_id: str, spec: dict | None = None) -> dict:
    """spec: a shard's part of a front API job (its tenant, videos on this shard, questions,
    parameters), made into this shard's job record on first delivery; so a part queued while
    the shard was down runs when it comes back."""
    rt = runtime()
    home = rt.settings.home
    try:
        job = J.load_job(job_id, home)
    except J.JobNotFound:
        if spec is None:
            return {"job_id": job_id, "status": "DELETED"}
        job = _create_part(rt, job_id, spec)
    if job["status"] not in J.FINAL and _cancelled_at_front(rt, job_id):
        job = J.cancel_job(job_id, home)         # cancelled while this shard was down
    if job["status"] in J.FINAL:
        return {"job_id": job_id, "status": job["status"]}
    # Wait (without holding the worker) for videos still being ingested.
    pending = []
    for vid in job["video_ids"]:
        try:
            if rt.store.get_video(vid).status in (Status.QUEUED, Status.INGESTING):
                pending.append(vid)
        except VideoNotFoundError:
            pass
    if pending:
        J.update_job(job_id, home, status="WAITING", error=f"waiting for {len(pending)} video(s) to be READY")
        raise self.retry(countdown=3, max_retries=2400)
    rows = J.read_results(job_id, home)
    done = {(r["video_id"], r["question_index"]) for r in rows}
    errors = sum(1 for r in rows if r.get("error"))
    if J.update_job(job_id, home, running=True, done=len(done), errors=errors)["status"] in J.FINAL:
        return {"job_id": job_id, "status": "CANCELLED"}
    started = time.monotonic()
    todo = [(vid, qi, q) for vid in job["video_ids"] for qi, q in enumerate(job["questions"]) if (vid, qi) not in done]
    # Rows go to the query workers several at a time: they are decoded in one batch there.
    step = max(1, rt.settings.query_max_batch)
    for at in range(0, len(todo), step):
        if time.monotonic() - started > JOB_SLICE_S:
            self.apply_async((job_id,))                  # the rest, behind what queued meanwhile
            return {"job_id": job_id, "status": "RUNNING", "rows": len(done), "continued": True}
        try:
            rows = _answer_rows(rt, job, todo[at:at + step])
        except QuestionFailed as e:                      # no query worker, or it died: later
            J.update_job(job_id, home, status="WAITING", error=f"{e} (retrying)")
            raise self.retry(countdown=5, max_retries=720)
        for (vid, qi, _q), row in zip(todo[at:at + step], rows):
            errors += bool(row["error"])
            J.append_result(job_id, row, home)
            done.add((vid, qi))
        if J.update_job(job_id, home, done=len(done), errors=errors)["status"] in J.FINAL:
            return {"job_id": job_id, "status": "CANCELLED", "rows": len(done)}
    J.update_job(job_id, home, status="DONE")
    return {"job_id": job_id, "status": "DONE", "rows": len(done), "errors": errors}


def _create_part(rt, job_id: str, spec: dict) -> dict:
    job = J.create_job(spec["tenant"], spec["video_ids"], spec["questions"], top_k=spec.get("top_k"),
                       mode=spec.get("mode", "bilevel"), count_by=spec.get("count_by"),
                       max_new_tokens=spec.get("max_new_tokens", 48), home=rt.settings.home, job_id=job_id)
    return job


def _cancelled_at_front(rt, job_id: str) -> bool:
    """A part of a front API job that was cancelled there (perhaps while this shard was down)."""
    return bool(rt.settings.shard) and _questions(rt).r.hget(front_job_key(job_id), "status") == b"CANCELLED"


_client = None


def _questions(rt):
    """This process's client of the query workers (workers/questions.py)."""
    global _client
    if _client is None:
        import redis
        _client = QuestionClient(redis.Redis.from_url(rt.settings.redis_url, socket_timeout=10),
                                 timeout_s=rt.settings.question_timeout_s, names=Names(rt.settings.shard))
    return _client


def _answer_rows(rt, job: dict, todo: list[tuple[str, int, str]]) -> list[dict]:
    """The result rows of (video, question index, question) sent together; a question the
    workers refuse (a deleted video, ...) is a row that says why. Raises QuestionFailed when
    the query workers could not answer (none running, one died): the job retries later."""
    futures = [_questions(rt).ask(vid, q, top_k=job["top_k"], mode=job["mode"], count_by=job.get("count_by"),
                                  max_new_tokens=job["max_new_tokens"]) for vid, _qi, q in todo]
    rows = []
    for (vid, qi, q), fut in zip(todo, futures):
        try:
            d = fut.result()
            rows.append(_row(vid, qi, q, **{k: d[k] for k in ("answer", "evidence", "timings", "kv_bytes_loaded",
                                                               "video_prefill_runs", "context_tokens", "mode")}))
        except QuestionFailed as e:
            if e.http_status >= 500:
                raise
            rows.append(_row(vid, qi, q, error=str(e)))
    return rows


@shared_task(name="videokv.reindex")
def reindex() -> dict:
    rt = runtime()
    oracle = rt.oracle
    dim = int(oracle.question_vector("probe").numel())
    rt.store.rebuild_index(oracle.identity, dim)
    path = rt.store.save_index(oracle.identity, dim)
    return {"oracle": oracle.identity, "snapshot": str(path)}
