"""Batch jobs (many videos x many questions): a JSON record and a JSONL results file under
HOME/jobs/. Written by the API (creation) and the worker (progress, results); both sides
read them. Files survive a Redis restart; the results file is append-only and resumable."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path

from videokv.errors import VideoKVError

# A job is QUEUED, WAITING (for its videos), RUNNING, then one of these.
FINAL = ("DONE", "FAILED", "CANCELLED")


class JobNotFound(VideoKVError):
    code = "job_not_found"
    http_status = 404


def jobs_dir(home: Path) -> Path:
    d = Path(home) / "jobs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _record_path(job_id: str, home) -> Path:
    if not job_id.isalnum():
        raise JobNotFound(f"no job {job_id!r}")
    return jobs_dir(home) / f"{job_id}.json"


def results_path(job_id: str, home) -> Path:
    return jobs_dir(home) / f"{_record_path(job_id, home).stem}.jsonl"


def create_job(tenant: str, video_ids: list[str], questions: list[str], *, top_k: int | None = None,
               mode: str = "bilevel", count_by: str | None = None, max_new_tokens: int = 48, home,
               job_id: str | None = None) -> dict:
    """A new QUEUED job; job_id: given by the front API for a shard's part of its job."""
    now = time.time()
    job = {"id": job_id or secrets.token_hex(8), "tenant": tenant, "video_ids": list(video_ids), "questions": list(questions),
           "top_k": top_k, "mode": mode, "count_by": count_by, "max_new_tokens": max_new_tokens, "status": "QUEUED",
           "done": 0, "total": len(video_ids) * len(questions), "errors": 0, "error": "",
           "created": now, "updated": now}
    save_job(job, home)
    return job


def save_job(job: dict, home) -> None:
    path = _record_path(job["id"], home)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(job))
    os.replace(tmp, path)


def load_job(job_id: str, home) -> dict:
    try:
        return json.loads(_record_path(job_id, home).read_text())
    except FileNotFoundError:
        raise JobNotFound(f"no job {job_id!r}") from None


def delete_job(job_id: str, home) -> None:
    """Remove a job's record and results (a job that could not be queued)."""
    for path in (_record_path(job_id, home), results_path(job_id, home), _record_path(job_id, home).with_suffix(".lock")):
        path.unlink(missing_ok=True)


def update_job(job_id: str, home, running: bool = False, **fields) -> dict:
    """Change a job's record under its lock; returns it. A job that reached a final status
    (a cancelled one, say) keeps it: progress is still recorded, the status is not changed.
    running: set RUNNING (unless final), as a worker starting a slice does."""
    with _locked(job_id, home):
        job = load_job(job_id, home)
        if job["status"] in FINAL:
            fields.pop("status", None)
        elif running:
            fields.update(status="RUNNING", error="")
        job.update(fields, updated=time.time())
        save_job(job, home)
        return job


def cancel_job(job_id: str, home) -> dict:
    """CANCELLED, unless it already ended; the worker stops before its next row."""
    with _locked(job_id, home):
        job = load_job(job_id, home)
        if job["status"] not in FINAL:
            job.update(status="CANCELLED", updated=time.time())
            save_job(job, home)
        return job


@contextmanager
def _locked(job_id: str, home):
    """An exclusive lock on one job's record (API and workers both write it)."""
    path = _record_path(job_id, home).with_suffix(".lock")
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_results(job_id: str, home) -> list[dict]:
    """Complete rows only (a partial last line left by a killed worker is ignored)."""
    try:
        text = results_path(job_id, home).read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.split("\n"):
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def append_result(job_id: str, row: dict, home) -> None:
    path = results_path(job_id, home)
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():            # drop a partial line left by a killed worker
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.seek(0)
                data = f.read()
                f.truncate(data.rfind(b"\n") + 1)
        f.write((json.dumps(row) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


CSV_FIELDS = ["video_id", "question_index", "question", "answer", "evidence", "ttft_ms", "kv_bytes_loaded",
              "video_prefill_runs", "error"]


def results_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        ev = ";".join(f"{e['chunk']}@{e['t_start']:.1f}-{e['t_end']:.1f}s" for e in r.get("evidence") or [])
        w.writerow({**r, "evidence": ev, "ttft_ms": (r.get("timings") or {}).get("ttft_ms", "")})
    return buf.getvalue()
