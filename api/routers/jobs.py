"""/v1/jobs: batch analytics (many videos x many questions) run by the workers."""

# No `from __future__ import annotations`: FastAPI must see the request models made per app
# (`body: QueryRequest` names a local) as classes, not strings.

import json
import re

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, PlainTextResponse

from videokv.workers import jobs as J

from ..problems import Problem
from ..schemas import JOB_ID, Job
from ..service import job_view
from .deps import problems, tenant_of


def router(svc, models) -> APIRouter:
    r = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problems(401))
    tenant = tenant_of(svc)
    home = svc.settings.home
    JobRequest = models.JobRequest

    @r.post("", status_code=202, response_model=Job, responses=problems(400, 404, 413, 422, 503, 507))
    def create_job(body: JobRequest, t: str = Depends(tenant)):
        for i, q in enumerate(body.questions):
            svc.check_question(q, f"questions[{i}]")
        vids = list(dict.fromkeys(body.video_ids))
        rows = len(vids) * len(body.questions)
        if rows > svc.settings.max_job_rows:
            raise Problem(422, f"a job is at most {svc.settings.max_job_rows} rows (videos x questions; "
                               f"VIDEOKV_MAX_JOB_ROWS), this one is {rows}: split it", code="job_too_large")
        for v in vids:
            svc.owned(v, t)
        job = J.create_job(t, vids, body.questions, top_k=body.top_k, mode=body.mode, count_by=body.count_by,
                           max_new_tokens=body.max_new_tokens, home=home)
        try:
            svc.send("videokv.run_job", job["id"])
        except Exception as e:
            J.delete_job(job["id"], home)
            raise Problem(503, f"the task queue is unavailable ({type(e).__name__}); try again",
                          code="queue_unavailable") from None
        return JSONResponse(job_view(job), status_code=202, headers={"Location": f"/v1/jobs/{job['id']}"})

    def owned_job(job_id: str, t: str) -> dict:
        job = None
        if re.fullmatch(JOB_ID, job_id):
            try:
                job = J.load_job(job_id, home)
            except J.JobNotFound:
                pass
        if job is None or job["tenant"] != t:
            raise Problem(404, f"no job {job_id!r}", code="job_not_found")
        return job

    @r.get("/{job_id}", response_model=Job, responses=problems(404))
    def get_job(job_id: str, t: str = Depends(tenant)):
        return job_view(owned_job(job_id, t))

    @r.delete("/{job_id}", response_model=Job, responses=problems(404),
              description="Cancel the job: it stops before its next row (rows already answered stay); "
                          "a job that ended is returned as it is.")
    def cancel_job(job_id: str, t: str = Depends(tenant)):
        owned_job(job_id, t)
        return job_view(J.cancel_job(job_id, home))

    @r.get("/{job_id}/results", response_class=PlainTextResponse,
           responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}, **problems(404, 422)})
    def job_results(job_id: str, format: str = Query("jsonl", pattern="^(jsonl|csv)$"), t: str = Depends(tenant)):
        owned_job(job_id, t)
        rows = J.read_results(job_id, home)
        if format == "csv":
            return PlainTextResponse(J.results_csv(rows), media_type="text/csv")
        return PlainTextResponse("".join(json.dumps(row) + "\n" for row in rows), media_type="application/x-ndjson")

    return r
