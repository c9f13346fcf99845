"""The REST API (FastAPI), versioned under /v1; OpenAPI at /openapi.json, docs at /docs.

    uvicorn --factory videokv.services:api_app          (or: videokv serve)

Ingest runs on Celery workers (queue `ingest`); batch jobs on queue `query`. Interactive
questions (`POST /v1/videos/{id}/query`) and search run *in this process* for latency:
the model loads once here, questions are answered one at a time (a lock), each from the
stored KV cache (no video prefill). Every response for another tenant's object is a 404.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from videokv.kvstore import Status, VideoNotFoundError, VideoRecord

from videokv.api import problems
from videokv.api.auth import KeyRing
from videokv.api.problems import Problem
from videokv.api.schemas import JobRequest, QueryRequest, SearchRequest
from videokv.api.upload import Received, receive_file

TERMINAL = (Status.READY, Status.FAILED)


class Service:
    """Per-app state: settings, runtime (model + store, loaded lazily), key ring, Celery."""

    def __init__(self, settings, runtime):
        self.settings = settings
        self.rt = runtime
        self.keys = KeyRing(settings.home)
        self.uploads = Path(settings.home) / "uploads"
        self.ask_lock = threading.Lock()
        self.register_lock = threading.Lock()
        self._celery = None

    @property
    def celery(self):
        if self._celery is None:
            from videokv.workers.app import make_app
            self._celery = make_app(self.settings)
        return self._celery

    def send(self, name: str, *args) -> None:
        self.celery.send_task(name, args=list(args), retry=True,
                              retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})

    # ---------------------------------------------------------------- videos
    def owned(self, video_id: str, tenant: str) -> VideoRecord:
        try:
            rec = self.rt.store.get_video(video_id)
        except VideoNotFoundError:
            rec = None
        if rec is None or rec.tenant != tenant:
            raise Problem(404, f"no video {video_id!r}", code="video_not_found")
        return rec

    def text_options(self, up: Received):
        """The upload's text channel switches (form fields ocr/asr/subtitles, optional
        subtitles_file part) over the settings' defaults; a bad value is a 422."""
        from videokv.ingest.text import BadSubtitles, check_tools
        from videokv.ingest.text.subtitles import parse_file
        flags = {}
        for name, raw in (up.fields or {}).items():
            v = raw.strip().lower()
            if v not in _BOOL:
                raise Problem(422, f"form field {name!r} must be true or false, got {raw!r}", code="invalid_request")
            flags[name] = _BOOL[v]
        if up.subtitles is not None:
            try:
                parse_file(str(up.subtitles))
            except BadSubtitles as e:
                raise Problem(422, f"subtitles_file: {e}", code="bad_subtitles") from None
        opts = self.rt.text_defaults.overridden(ocr=flags.get("ocr"), asr=flags.get("asr"),
                                                subtitles=flags.get("subtitles"),
                                                subtitle_file=str(up.subtitles) if up.subtitles is not None else None)
        check_tools(opts)
        return opts

    def register(self, up: Received, tenant: str) -> tuple[VideoRecord, bool]:
        """Probe (a bad file raises its VideoError: nothing stored or queued), then create the
        record, or return this tenant's video over the same bytes, text channels and model config."""
        from videokv.ingest.text import content_key
        from videokv.ingest.text.subtitles import has_subtitle_stream
        from videokv.ingest.video import probe
        try:
            info = probe(up.path)
            opts = self.text_options(up)
            embedded = opts.subtitles and opts.subtitle_file is None and has_subtitle_stream(up.path)
            key = content_key(up.sha256, opts, embedded)
        except Exception:
            up.discard()
            raise
        fp = self.rt.config.fingerprint()
        with self.register_lock:
            rec = self.rt.store.create_video(
                content_hash=key, fingerprint=fp, tenant=tenant, plan=[], filename=up.filename,
                container=info.container, codec=info.codec, duration=info.duration, fps=info.fps)
            old_path = (rec.extra or {}).get("path")
            if old_path and Path(old_path).exists():
                up.discard()
                if rec.status is not Status.FAILED:
                    return rec, True
                self.rt.store.set_status(rec.video_id, Status.QUEUED, reason="re-uploaded: retrying")
            else:
                dest = self.uploads / rec.video_id / up.filename
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(up.path, dest)
                text = {"ocr": opts.ocr, "asr": opts.asr, "subtitles": opts.subtitles}
                if up.subtitles is not None:
                    sub = dest.parent / f"subtitles{Path(opts.subtitle_file).suffix}"
                    os.replace(up.subtitles, sub)
                    text["subtitle_file"] = str(sub)
                up.discard()
                rec = self.rt.store.update_video(rec.video_id, extra={**(rec.extra or {}), "path": str(dest),
                                                                     "size": up.size, "text_options": text})
        try:
            self.send("videokv.ingest_video", rec.video_id)
        except Exception as e:
            if not old_path:
                self.delete(rec)
            raise Problem(503, f"the task queue is unavailable ({type(e).__name__}); try again",
                          code="queue_unavailable") from None
        return self.rt.store.get_video(rec.video_id), bool(old_path)

    def delete(self, rec: VideoRecord) -> None:
        self.rt.store.delete_video(rec.video_id)
        shutil.rmtree(self.uploads / rec.video_id, ignore_errors=True)

    def ask(self, video_id: str, body: QueryRequest, on_token=None) -> dict:
        with self.ask_lock:
            ans = self.rt.queries.ask(video_id, body.question, top_k=body.top_k, mode=body.mode,
                                      max_new_tokens=body.max_new_tokens, on_token=on_token,
                                      count_by=body.count_by)
        return ans.to_dict()


_BOOL = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def video_view(rec: VideoRecord, request: Request | None = None) -> dict:
    total = rec.chunks_total
    progress = 1.0 if rec.status is Status.READY else (rec.chunks_done / total if total else 0.0)
    url = f"/v1/videos/{rec.video_id}"
    return {"id": rec.video_id, "status": rec.status.value, "filename": rec.filename,
            "duration": round(rec.duration, 3), "fps": round(rec.fps, 3), "container": rec.container,
            "codec": rec.codec, "chunks_total": total, "chunks_done": rec.chunks_done,
            "progress": round(progress, 4), "error": rec.reason if rec.status is Status.FAILED else "",
            "note": rec.reason if rec.status is not Status.FAILED else "",
            "created": rec.created, "updated": rec.updated, "status_url": url, "events_url": url + "/events",
            "text_channels": (rec.extra or {}).get("text", {}), "transcript_url": url + "/transcript"}


def job_view(job: dict) -> dict:
    out = {k: v for k, v in job.items() if k != "tenant"}
    out["status_url"] = f"/v1/jobs/{job['id']}"
    out["results_url"] = f"/v1/jobs/{job['id']}/results"
    return out


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def create_app(settings, runtime) -> FastAPI:
    """settings: the Settings; runtime: the composition root's Runtime (videokv.services.api_app)."""
    svc = Service(settings, runtime)
    app = FastAPI(title="videokv", version="1", description=__doc__)
    app.state.service = svc
    problems.install(app)

    def tenant(request: Request) -> str:
        if settings.auth == "open":
            return "default"
        return svc.keys.tenant(request.headers.get("authorization"))

    def check_question(q: str, field: str = "question") -> None:
        if len(q) > settings.max_question_chars:
            raise Problem(422, f"{field} is {len(q)} characters; the limit is {settings.max_question_chars}",
                          code="invalid_request")
        if not q.strip():
            raise Problem(422, f"{field} is empty", code="invalid_request")

    # ------------------------------------------------------------ health
    @app.get("/healthz", tags=["health"])
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz():
        checks = {}
        try:
            import redis
            redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2).ping()
            checks["redis"] = "ok"
        except Exception as e:
            checks["redis"] = f"error: {type(e).__name__}: {e}"
        try:
            svc.rt.store.list_videos("default")
            checks["lmdb"] = "ok"
        except Exception as e:
            checks["lmdb"] = f"error: {type(e).__name__}: {e}"
        try:
            checks["model"] = f"ok ({svc.rt.config.fingerprint()})"
        except Exception as e:
            checks["model"] = f"error: {type(e).__name__}: {e}"
        ok = all(v.startswith("ok") for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    # ------------------------------------------------------------ videos
    @app.post("/v1/videos", status_code=202, tags=["videos"],
              description="multipart/form-data with a `file` part. 202: queued for ingest; 200: the same "
                          "file was already uploaded by this tenant with this model config (same id).")
    async def upload(request: Request, t: str = Depends(tenant)):
        limit = settings.max_upload_mb << 20
        up = await receive_file(request, svc.uploads, limit)
        rec, dedup = await run_in_threadpool(svc.register, up, t)
        body = {**video_view(rec), "deduplicated": dedup}
        return JSONResponse(body, status_code=200 if dedup else 202, headers={"Location": body["status_url"]})

    @app.get("/v1/videos", tags=["videos"])
    def list_videos(t: str = Depends(tenant)):
        recs = sorted(svc.rt.store.list_videos(t), key=lambda r: r.created)
        return {"videos": [video_view(r) for r in recs]}

    @app.get("/v1/videos/{video_id}", tags=["videos"])
    def get_video(video_id: str, t: str = Depends(tenant)):
        return video_view(svc.owned(video_id, t))

    @app.delete("/v1/videos/{video_id}", status_code=204, tags=["videos"])
    def delete_video(video_id: str, t: str = Depends(tenant)):
        svc.delete(svc.owned(video_id, t))
        return Response(status_code=204)

    @app.get("/v1/videos/{video_id}/events", tags=["videos"],
             description="server-sent events: `progress` on every change, ends with `ready` or `failed`")
    async def video_events(video_id: str, request: Request, t: str = Depends(tenant),
                           timeout: float = Query(3600, gt=0, le=86400)):
        svc.owned(video_id, t)

        async def gen():
            last, deadline = None, time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    rec = svc.rt.store.get_video(video_id)
                except VideoNotFoundError:
                    yield sse("deleted", {"id": video_id})
                    return
                view = video_view(rec)
                key = (view["status"], view["chunks_done"], view["chunks_total"])
                if key != last:
                    last = key
                    yield sse("progress", view)
                if rec.status in TERMINAL:
                    yield sse(rec.status.value.lower(), view)
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.25)
            yield sse("timeout", {"id": video_id})

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/videos/{video_id}/transcript", tags=["videos"],
             description="the video's time-aligned text: on-screen text (OCR), speech and subtitles, "
                         "each segment with its source, time span and chunk; `channels` says which ran")
    def transcript(video_id: str, t: str = Depends(tenant)):
        from videokv.commands.embedded import transcript_view
        rec = svc.owned(video_id, t)
        got = svc.rt.store.get_transcript(video_id)
        if got is None and rec.status is not Status.READY:
            raise Problem(409, f"video {video_id} is {rec.status.value}: its text is extracted during ingest",
                          code="video_not_ready")
        return transcript_view(rec, got)

    @app.get("/v1/videos/{video_id}/frame", tags=["videos"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    def frame(video_id: str, t: float = Query(..., ge=0, le=1e7, description="seconds"),
              max_side: int = Query(640, ge=16, le=4096), u: str = Depends(tenant)):
        rec = svc.owned(video_id, u)
        path = (rec.extra or {}).get("path")
        if not path or not Path(path).exists():
            raise Problem(404, f"video {video_id} has no stored file to preview", code="no_file")
        if rec.duration and t > rec.duration:
            raise Problem(422, f"t={t} is past the end of the video ({rec.duration:.2f} s)", code="invalid_request")
        return Response(_jpeg_at(path, t, max_side), media_type="image/jpeg")

    @app.post("/v1/videos/{video_id}/query", tags=["query"],
              description="Answer a question from the stored KV cache (no video prefill). "
                          "`stream: true` -> text/event-stream of `token` events, then `answer`.")
    async def query(video_id: str, body: QueryRequest, t: str = Depends(tenant)):
        check_question(body.question)
        rec = svc.owned(video_id, t)
        if rec.status is not Status.READY:
            raise Problem(409, f"video {video_id} is {rec.status.value}"
                               + (f" ({rec.reason})" if rec.reason else "") + ": ask again once it is READY",
                          code="video_not_ready")
        if not body.stream:
            return await run_in_threadpool(svc.ask, video_id, body)
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def work():
            try:
                d = svc.ask(video_id, body, on_token=lambda p: loop.call_soon_threadsafe(q.put_nowait, ("token", p)))
                loop.call_soon_threadsafe(q.put_nowait, ("answer", d))
            except Exception as e:  # reported in-stream: headers are already sent
                loop.call_soon_threadsafe(q.put_nowait, ("error", {"detail": str(e), "type": type(e).__name__}))

        async def gen():
            fut = loop.run_in_executor(None, work)
            while True:
                kind, data = await q.get()
                if kind == "token":
                    yield sse("token", {"text": data})
                else:
                    yield sse(kind, data)
                    break
            await fut

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------ search
    @app.post("/v1/search", tags=["query"])
    def search(body: SearchRequest, t: str = Depends(tenant)):
        check_question(body.query, "query")
        recs = {v: svc.owned(v, t) for v in body.video_ids} if body.video_ids is not None else None
        rt = svc.rt
        scope = {"video_ids": list(recs) if recs is not None else None, "tenant": t}
        with svc.ask_lock:   # the model is shared with interactive questions
            qv = rt.oracle.question_vector(body.query).numpy()
        in_scope = recs.values() if recs is not None else rt.store.list_videos(t)
        if not any((r.extra or {}).get("text_oracle") == rt.text_oracle.identity for r in in_scope):
            hits = rt.store.search(rt.oracle.identity, qv, body.top_k, **scope)
        else:
            # Hybrid, as for one video's question (query/retrieval.py), with each oracle's
            # scores standardised over its candidates across the videos in scope.
            from videokv.kvstore import Hit
            from videokv.oracles.fusion import fuse, top
            n = min(1000, 4 * body.top_k)
            with svc.ask_lock:
                tq = rt.text_oracle.question_vector(body.query).numpy()
            per = [{(h.video_id, h.chunk): h.score for h in rt.store.search(oid, q, n, **scope)}
                   for oid, q in ((rt.oracle.identity, qv), (rt.text_oracle.identity, tq))]
            # Both over the same candidates: a chunk one oracle did not return scores as its
            # worst candidate there (text: 0, no words in common).
            union = per[0].keys() | per[1].keys()
            per = [{c: p.get(c, floor) for c in union} for p, floor in zip(per, (min(per[0].values(), default=0.0), 0.0))]
            hits = [Hit(s.chunk[0], s.chunk[1], s.score) for s in top(fuse(per, [1.0, settings.text_weight]), body.top_k)]
        out, cache = [], dict(recs or {})
        for h in hits:
            rec = cache.get(h.video_id) or cache.setdefault(h.video_id, rt.store.get_video(h.video_id))
            if rec.tenant != t:     # the store scopes by tenant already; never leak
                continue
            span = rec.plan[h.chunk] if 0 <= h.chunk < len(rec.plan) else None
            out.append({"video_id": h.video_id, "filename": rec.filename, "chunk": h.chunk,
                        "t_start": span.t_start if span else None, "t_end": span.t_end if span else None,
                        "score": h.score})
        return {"query": body.query, "results": out}

    # ------------------------------------------------------------ jobs
    from videokv.workers import jobs as J

    @app.post("/v1/jobs", status_code=202, tags=["jobs"])
    def create_job(body: JobRequest, t: str = Depends(tenant)):
        for i, q in enumerate(body.questions):
            check_question(q, f"questions[{i}]")
        vids = list(dict.fromkeys(body.video_ids))
        for v in vids:
            svc.owned(v, t)
        job = J.create_job(t, vids, body.questions, top_k=body.top_k, mode=body.mode,
                           max_new_tokens=body.max_new_tokens, home=settings.home)
        try:
            svc.send("videokv.run_job", job["id"])
        except Exception as e:
            J._record_path(job["id"], settings.home).unlink(missing_ok=True)
            raise Problem(503, f"the task queue is unavailable ({type(e).__name__}); try again",
                          code="queue_unavailable") from None
        return JSONResponse(job_view(job), status_code=202, headers={"Location": f"/v1/jobs/{job['id']}"})

    def owned_job(job_id: str, t: str) -> dict:
        try:
            job = J.load_job(job_id, settings.home)
        except J.JobNotFound:
            job = None
        if job is None or job["tenant"] != t:
            raise Problem(404, f"no job {job_id!r}", code="job_not_found")
        return job

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: str, t: str = Depends(tenant)):
        return job_view(owned_job(job_id, t))

    @app.get("/v1/jobs/{job_id}/results", tags=["jobs"],
             responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}})
    def job_results(job_id: str, format: str = Query("jsonl", pattern="^(jsonl|csv)$"), t: str = Depends(tenant)):
        owned_job(job_id, t)
        rows = J.read_results(job_id, settings.home)
        if format == "csv":
            return PlainTextResponse(J.results_csv(rows), media_type="text/csv")
        return PlainTextResponse("".join(json.dumps(r) + "\n" for r in rows), media_type="application/x-ndjson")

    return app


def _jpeg_at(path: str, t: float, max_side: int) -> bytes:
    """The frame shown at `t` seconds, as JPEG (evidence preview)."""
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        tb = s.time_base
        start = s.start_time or 0
        c.seek(int(t / tb) + start, stream=s, backward=True, any_frame=False)
        chosen = None
        for f in c.decode(s):
            if chosen is None or f.pts is None or float((f.pts - start) * tb) <= t + 1e-6:
                chosen = f
            else:
                break
        if chosen is None:
            raise Problem(422, f"no frame at t={t}", code="no_frame")
        img = chosen.to_image()
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()
