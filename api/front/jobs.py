"""/v1/jobs through the front API: a job is split by shard, each part queued on its shard's
Celery queue (query.NAME) with its spec, so no shard API needs to be up to accept it; the
shard's worker makes the part its own job record on first delivery (workers/tasks.run_job)
and runs it there, next to the KV. The front keeps the job in Redis (`videokv:job:{id}`:
tenant, spec, shards, cancelled) and builds its status and results from the parts.

A part whose shard is down stays queued in Redis and runs when the shard is back; meanwhile
the job is WAITING and its `shards` entry says which part waits. Results are read from every
part's shard: while one is down they are a 503 naming it (a partial download would look
complete).
"""

# No `from __future__ import annotations`: FastAPI must see `body: JobRequest` as a class.

import asyncio
import json
import re
import secrets
import time

from fastapi import Depends, Query
from fastapi.responses import JSONResponse, PlainTextResponse

from videokv.api.problems import Problem
from videokv.api.schemas import JOB_ID
from videokv.workers.jobs import FINAL, results_csv
from videokv.workers.shards import Names, front_job_key

from .pool import ShardPool, ShardUnreachable, shard_unavailable

PARAMS = ("top_k", "mode", "count_by", "max_new_tokens")


def install(app, pool: ShardPool, models, settings, tenant) -> None:
    JobRequest = models.JobRequest
    celery = {}

    def send_part(job_id: str, shard: str, spec: dict) -> None:
        if "app" not in celery:
            from videokv.workers.app import make_app
            celery["app"] = make_app(settings)
        celery["app"].send_task("videokv.run_job", args=[job_id, spec], queue=Names(shard).query_queue, retry=True,
                                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})

    @app.post("/v1/jobs", status_code=202)
    async def create_job(body: JobRequest, t: str = Depends(tenant)):
        vids = list(dict.fromkeys(body.video_ids))
        rows = len(vids) * len(body.questions)
        if rows > settings.max_job_rows:
            raise Problem(422, f"a job is at most {settings.max_job_rows} rows (videos x questions; "
                               f"VIDEOKV_MAX_JOB_ROWS), this one is {rows}: split it", code="job_too_large")
        by_shard: dict[str, list[str]] = {}
        for v in vids:
            by_shard.setdefault(await pool.shard_name(v, t), []).append(v)
        job_id = secrets.token_hex(8)
        params = {k: getattr(body, k) for k in PARAMS}
        record = {"tenant": t, "video_ids": json.dumps(vids), "questions": json.dumps(body.questions),
                  "params": json.dumps(params), "shards": json.dumps(sorted(by_shard)), "status": "",
                  "created": time.time()}
        try:
            await asyncio.to_thread(pool.r.hset, front_job_key(job_id), mapping=record)
            for shard, part in sorted(by_shard.items()):
                spec = {"tenant": t, "video_ids": part, "questions": body.questions, **params}
                await asyncio.to_thread(send_part, job_id, shard, spec)
        except Exception as e:  # noqa: BLE001
            # Parts already queued must not run for a job nobody can see: they start cancelled.
            await asyncio.to_thread(pool.r.hset, front_job_key(job_id), "status", "CANCELLED")
            raise Problem(503, f"the task queue is unavailable ({type(e).__name__}); try again",
                          code="queue_unavailable", headers={"Retry-After": "5"}) from None
        view = await _view(pool, job_id, _decode(record))
        return JSONResponse(view, status_code=202, headers={"Location": view["status_url"]})

    async def owned(job_id: str, t: str) -> dict:
        raw = await asyncio.to_thread(pool.r.hgetall, front_job_key(job_id)) if re.fullmatch(JOB_ID, job_id) else {}
        job = _decode(raw) if raw else None
        if job is None or job["tenant"] != t:
            raise Problem(404, f"no job {job_id!r}", code="job_not_found")
        return job

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str, t: str = Depends(tenant)):
        return await _view(pool, job_id, await owned(job_id, t))

    @app.delete("/v1/jobs/{job_id}")
    async def cancel_job(job_id: str, t: str = Depends(tenant)):
        job = await owned(job_id, t)
        view = await _view(pool, job_id, job)
        if view["status"] in FINAL:                 # as on one host: a job that ended stays as it ended
            return view
        # Recorded here first: a part its shard has not made yet starts cancelled, and a part
        # running on a shard that is down stops at its next slice when it is back.
        await asyncio.to_thread(pool.r.hset, front_job_key(job_id), "status", "CANCELLED")
        job["status"] = "CANCELLED"
        await pool.fanout("DELETE", f"/v1/jobs/{job_id}", t, bodies={name: None for name in job["shards"]})
        return await _view(pool, job_id, job)

    @app.get("/v1/jobs/{job_id}/results")
    async def job_results(job_id: str, format: str = Query("jsonl", pattern="^(jsonl|csv)$"),
                          t: str = Depends(tenant)):
        job = await owned(job_id, t)
        states = await pool.states()
        rows = []
        for name in job["shards"]:
            state = states.get(name)
            if state is None or not state.up:
                raise shard_unavailable(name, "its API is not heartbeating; this job's rows from it wait for it")
            try:
                resp = await pool.send(state, "GET", f"/v1/jobs/{job_id}/results", t, params={"format": "jsonl"})
            except ShardUnreachable as e:
                raise shard_unavailable(e.name, e.why) from None
            if resp.status_code == 200:
                rows += [json.loads(line) for line in resp.text.splitlines() if line.strip()]
            elif resp.status_code != 404:           # 404: the shard has not taken its part yet
                raise shard_unavailable(name, f"it answered HTTP {resp.status_code} for this job's rows")
        order = {v: i for i, v in enumerate(job["video_ids"])}
        rows.sort(key=lambda r: (order.get(r["video_id"], len(order)), r["question_index"]))
        if format == "csv":
            return PlainTextResponse(results_csv(rows), media_type="text/csv")
        return PlainTextResponse("".join(json.dumps(r) + "\n" for r in rows), media_type="application/x-ndjson")


def _decode(raw: dict) -> dict:
    d = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
         for k, v in raw.items()}
    return {"tenant": d["tenant"], "video_ids": json.loads(d["video_ids"]), "questions": json.loads(d["questions"]),
            "params": json.loads(d["params"]), "shards": json.loads(d["shards"]), "status": d.get("status", ""),
            "created": float(d["created"])}


async def _view(pool: ShardPool, job_id: str, job: dict) -> dict:
    """The job as the single-host API shows it, its status made from its parts' (each part:
    its shard's job record; QUEUED while the shard has not taken it; UNAVAILABLE while the
    shard is down)."""
    replies, _missing = await pool.fanout("GET", f"/v1/jobs/{job_id}", job["tenant"],
                                         bodies={name: None for name in job["shards"]})
    parts = {}
    for name in job["shards"]:
        resp = replies.get(name)
        if resp is not None and resp.status_code == 200:
            p = resp.json()
            parts[name] = {k: p[k] for k in ("status", "done", "total", "errors", "error", "updated")}
        elif resp is not None and resp.status_code == 404:   # its shard has not taken it off the queue yet
            parts[name] = {"status": "QUEUED", "done": 0, "errors": 0, "error": "", "updated": 0.0}
        else:
            parts[name] = {"status": "UNAVAILABLE", "done": 0, "errors": 0, "updated": 0.0,
                           "error": f"shard {name!r} is unavailable: its part runs when it is back"}
    p = job["params"]
    return {"id": job_id, "video_ids": job["video_ids"], "questions": job["questions"], "top_k": p["top_k"],
            "mode": p["mode"], "count_by": p.get("count_by"), "max_new_tokens": p["max_new_tokens"],
            "status": _status(job["status"], {x["status"] for x in parts.values()}),
            "done": sum(x["done"] for x in parts.values()), "total": len(job["video_ids"]) * len(job["questions"]),
            "errors": sum(x["errors"] for x in parts.values()),
            "error": "; ".join(x["error"] for x in parts.values() if x["error"]),
            "created": job["created"], "updated": max([job["created"]] + [x["updated"] for x in parts.values()]),
            "status_url": f"/v1/jobs/{job_id}", "results_url": f"/v1/jobs/{job_id}/results", "shards": parts}


def _status(front: str, parts: set[str]) -> str:
    """The job's status from its parts': final only once every part is."""
    if parts <= set(FINAL):
        return "FAILED" if "FAILED" in parts else "CANCELLED" if "CANCELLED" in parts else "DONE"
    if front == "CANCELLED":
        return "CANCELLED"
    if parts == {"QUEUED"}:
        return "QUEUED"
    if "RUNNING" in parts:
        return "RUNNING"
    return "WAITING" if parts & {"WAITING", "UNAVAILABLE"} else "RUNNING"
