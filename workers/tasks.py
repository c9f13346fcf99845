"""Celery tasks. They call the ingest pipeline and the query engine; no pipeline logic here.

- `ingest_video(video_id)`: the record (created by the API at upload, with the file's path
  in `extra["path"]`) is ingested; idempotent and resumable (the pipeline skips chunks
  already committed; `put_chunk` updates `chunks_done` in the catalog). A user error in the
  file (VideoError, ...) -> FAILED with its message, no retry; anything else is retried with
  exponential backoff, then FAILED with the last error.
- `run_job(job_id)`: a batch of videos x questions; rows appended to HOME/jobs/ID.jsonl,
  progress in HOME/jobs/ID.json; a re-delivered job skips rows already written.
- `reindex()`: rebuild and snapshot the FAISS index of this runtime's oracle.
"""

from __future__ import annotations

import logging

from celery import shared_task

from videokv.errors import VideoKVError
from videokv.kvstore import Status, VideoNotFoundError
from videokv.kvstore.errors import IllegalTransition

from . import jobs as J
from .app import runtime

log = logging.getLogger("videokv.workers")


def _permanent(e: BaseException) -> bool:
    """A user error (bad file, bad question): retrying cannot help."""
    return isinstance(e, VideoKVError) and e.http_status < 500


def _fail(video_id: str, reason: str) -> None:
    try:
        runtime().store.set_status(video_id, Status.FAILED, reason=reason)
    except (VideoNotFoundError, IllegalTransition):   # deleted, or READY meanwhile: nothing to mark
        pass


@shared_task(bind=True, name="videokv.ingest_video", max_retries=None)
def ingest_video(self, video_id: str) -> dict:
    rt = runtime()
    store = rt.store
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
        attempts = self.request.retries + 1
        limit = rt.settings.ingest_max_retries
        if attempts > limit:
            _fail(video_id, f"ingest failed {attempts} times; last error: {type(e).__name__}: {e}")
            raise
        log.warning("ingest of %s failed (%s: %s); retry %d/%d", video_id, type(e).__name__, e, attempts, limit)
        try:
            store.set_status(video_id, Status.QUEUED, reason=f"retrying after {type(e).__name__}: {e}")
        except VideoNotFoundError:
            return {"video_id": video_id, "status": "DELETED"}
        raise self.retry(exc=e, countdown=min(2 ** attempts, 60))
    return dict(res.__dict__)


def _row(video_id: str, qi: int, question: str, **fields) -> dict:
    return {"video_id": video_id, "question_index": qi, "question": question, "answer": "", "evidence": [],
            "timings": {}, "kv_bytes_loaded": 0, "video_prefill_runs": 0, "error": "", **fields}


@shared_task(bind=True, name="videokv.run_job", max_retries=None)
def run_job(self, job_id: str) -> dict:
    rt = runtime()
    try:
        job = J.load_job(job_id, rt.settings.home)
    except J.JobNotFound:
        return {"job_id": job_id, "status": "DELETED"}
    if job["status"] in ("DONE", "FAILED"):
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
        J.update_job(job_id, rt.settings.home, status="WAITING", error=f"waiting for {len(pending)} video(s) to be READY")
        raise self.retry(countdown=3, max_retries=2400)
    done = {(r["video_id"], r["question_index"]) for r in J.read_results(job_id, rt.settings.home)}
    J.update_job(job_id, rt.settings.home, status="RUNNING", done=len(done), error="")
    errors = sum(1 for r in J.read_results(job_id, rt.settings.home) if r.get("error"))
    for vid in job["video_ids"]:
        for qi, q in enumerate(job["questions"]):
            if (vid, qi) in done:
                continue
            try:
                ans = rt.queries.ask(vid, q, top_k=job["top_k"], mode=job["mode"], count_by=job.get("count_by"),
                                     max_new_tokens=job["max_new_tokens"])
                d = ans.to_dict()
                row = _row(vid, qi, q, **{k: d[k] for k in ("answer", "evidence", "timings", "kv_bytes_loaded",
                                                             "video_prefill_runs", "context_tokens", "mode")})
            except VideoKVError as e:    # deleted or failed video, ...: a row that says why
                row = _row(vid, qi, q, error=str(e))
                errors += 1
            J.append_result(job_id, row, rt.settings.home)
            done.add((vid, qi))
            J.update_job(job_id, rt.settings.home, done=len(done), errors=errors)
    J.update_job(job_id, rt.settings.home, status="DONE")
    return {"job_id": job_id, "status": "DONE", "rows": len(done), "errors": errors}


@shared_task(name="videokv.reindex")
def reindex() -> dict:
    rt = runtime()
    oracle = rt.oracle
    dim = int(oracle.question_vector("probe").numel())
    rt.store.rebuild_index(oracle.identity, dim)
    path = rt.store.save_index(oracle.identity, dim)
    return {"oracle": oracle.identity, "snapshot": str(path)}
