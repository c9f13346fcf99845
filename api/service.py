"""The API's state and the work behind its endpoints: tenant checks, upload registration,
questions, views. Routers (api/routers/) are thin: they validate, call this, and shape the
response."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

from fastapi import Request

from videokv.kvstore import Status, VideoNotFoundError, VideoRecord
from videokv.workers.metrics import api_registry
from videokv.workers.shards import Names

from .auth import CLUSTER_HEADER, TENANT_HEADER, KeyRing, trusted_tenant
from .problems import Problem
from .schemas import VIDEO_ID
from .upload import Received

TERMINAL = (Status.READY, Status.FAILED)
_BOOL = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


class Service:
    """Per-app state: settings, the runtime (the store; never the model), key ring, Celery, the
    query workers' client."""

    def __init__(self, settings, runtime):
        self.settings = settings
        self.rt = runtime
        self.keys = KeyRing(settings.home)
        self.uploads = Path(settings.home) / "uploads"
        self.register_lock = threading.Lock()
        self._celery = None
        # Questions go to the query workers (this process holds no model), behind an admission
        # limit: past VIDEOKV_MAX_QUEUED_QUESTIONS in flight a question is told to come back (503).
        self._client, self._client_lock = None, threading.Lock()
        self._admitted = threading.BoundedSemaphore(settings.max_queued_questions)
        self.names = Names(settings.shard)
        self.metrics_registry, self.metrics = api_registry(lambda: self.rt.store.list_videos(), lambda: self.questions.r,
                                                          self.names)

    @property
    def celery(self):
        if self._celery is None:
            from videokv.workers.app import make_app
            self._celery = make_app(self.settings)
        return self._celery

    def send(self, name: str, *args) -> None:
        self.celery.send_task(name, args=list(args), retry=True,
                              retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})

    # ---------------------------------------------------------------- auth
    def tenant(self, request: Request) -> str:
        """The caller's tenant (from its API key); "default" with VIDEOKV_AUTH=open. A shard's
        API also serves the front API, which names the tenant it checked (api/front/)."""
        forwarded = request.headers.get(TENANT_HEADER)
        if forwarded is not None and self.settings.cluster_token:      # a single host ignores it
            return trusted_tenant(self.settings, request.headers.get(CLUSTER_HEADER), forwarded)
        if self.settings.auth == "open":
            return "default"
        return self.keys.tenant(request.headers.get("authorization"))

    def check_question(self, q: str, field: str = "question") -> None:
        if len(q) > self.settings.max_question_chars:
            raise Problem(422, f"{field} is {len(q)} characters; the limit is {self.settings.max_question_chars}",
                          code="invalid_request")
        if not q.strip():
            raise Problem(422, f"{field} is empty", code="invalid_request")

    # ---------------------------------------------------------------- videos
    def owned(self, video_id: str, tenant: str) -> VideoRecord:
        """The tenant's video, else a 404 (also for ids the service cannot have made)."""
        rec = None
        if re.fullmatch(VIDEO_ID, video_id):
            try:
                rec = self.rt.store.get_video(video_id)
            except VideoNotFoundError:
                pass
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
                parse_file(str(up.subtitles), name=up.subtitles_name or None)
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
            key = content_key(up.sha256, opts, embedded, None if self.settings.share_kv_across_tenants else tenant)
            fp = self.fingerprint()
        except Exception:
            up.discard()
            raise
        with self.register_lock:
            rec = self.rt.store.create_video(
                content_hash=key, fingerprint=fp, tenant=tenant, plan=[], filename=up.filename,
                container=info.container, codec=info.codec, duration=info.duration, fps=info.fps)
            old_path = (rec.extra or {}).get("path")
            if old_path and Path(old_path).exists():
                up.discard()
                if rec.status is not Status.FAILED:
                    self.requeue_if_stale(rec)
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

    def requeue_if_stale(self, rec: VideoRecord) -> bool:
        """An ingest whose worker died (its lease lapsed) is queued again; True if it was."""
        from videokv.workers.leases import Leases
        if rec.status not in (Status.QUEUED, Status.INGESTING):
            return False
        try:
            return Leases(self.settings.redis_url, self.settings.lease_ttl_s, names=self.names).requeue(rec.video_id,
                                                          lambda vid: self.send("videokv.ingest_video", vid))
        except Exception:  # noqa: BLE001 - Redis down: the workers' reapers will see it
            return False

    def delete(self, rec: VideoRecord) -> None:
        self.rt.store.delete_video(rec.video_id)
        shutil.rmtree(self.uploads / rec.video_id, ignore_errors=True)
        if "queries" in vars(self.rt):           # only if a query engine was built here
            self.rt.queries.forget(rec.video_id)

    # ---------------------------------------------------------------- questions
    @property
    def questions(self):
        """The client of the query workers (workers/questions.py), made on first use."""
        with self._client_lock:
            if self._client is None:
                import redis

                from videokv.workers.questions import QuestionClient
                r = redis.Redis.from_url(self.settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
                self._client = QuestionClient(r, timeout_s=self.settings.question_timeout_s, names=self.names)
            return self._client

    def fingerprint(self) -> str:
        """The model/config fingerprint the query workers answer with (uploads are keyed by it)."""
        from videokv.workers.questions import announced_engine
        try:
            engine = announced_engine(self.questions.r, self.names)
        except Exception as e:  # noqa: BLE001
            raise Problem(503, f"Redis is unavailable ({type(e).__name__}); try again", code="queue_unavailable",
                          headers={"Retry-After": "5"}) from None
        if not engine:
            raise Problem(503, "no query worker has announced its model yet: start `videokv query-worker`",
                          code="no_query_worker", headers={"Retry-After": "10"})
        return engine["fingerprint"]

    async def ask(self, video_id: str, body, on_token=None, sampling: dict | None = None) -> dict:
        """The answer's dict, from a query worker; a failure is its problem (503s say when to
        come back). body: a QueryRequest; sampling: temperature, top_p, seed, stop (the OpenAI
        endpoint's). Counted in the API's metrics (workers/metrics.py)."""
        t0, first = time.perf_counter(), []

        def token(piece: str) -> None:
            if not first:
                first.append(time.perf_counter())
            on_token(piece)
        try:
            d = await self._remote(lambda c: c.ask(video_id, body.question, stream=on_token is not None,
                                                   on_token=token if on_token else None, top_k=body.top_k,
                                                   mode=body.mode, max_new_tokens=body.max_new_tokens,
                                                   count_by=body.count_by, when_by=body.when_by,
                                                   **({"sampling": sampling} if sampling else {})))
        except Problem as e:
            self.metrics.failed(body.mode, e.code or f"http_{e.status}")
            raise
        seconds = time.perf_counter() - t0
        # Not streamed: the first token came when the decode began (the answer's decode time before the end).
        ttft = first[0] - t0 if first else max(0.0, seconds - d.get("timings", {}).get("decode_ms", 0.0) / 1e3)
        self.metrics.answered(body.mode, d, seconds, ttft)
        return d

    async def search(self, body, tenant: str, video_ids: list[str] | None) -> dict:
        """{results, moments, next_page_token} of a SearchRequest, from a query worker."""
        return await self._remote(lambda c: c.search(body.query, body.top_k, tenant=tenant, video_ids=video_ids,
                                                     limit=body.limit, page_token=body.page_token,
                                                     min_score=body.min_score))

    async def _remote(self, send):
        """send(client) -> Future, admitted first: 503 + Retry-After when this process has
        VIDEOKV_MAX_QUEUED_QUESTIONS in flight already."""
        from videokv.workers.questions import QuestionFailed
        if not self._admitted.acquire(blocking=False):
            raise Problem(503, f"{self.settings.max_queued_questions} questions are already in flight; try again "
                               "in a few seconds", code="busy", headers={"Retry-After": "5"})
        try:
            # Sent from a thread: a slow or unreachable Redis never stalls the event loop
            # (/healthz is answered there).
            fut = await asyncio.get_running_loop().run_in_executor(None, send, self.questions)
            return await asyncio.wrap_future(fut)
        except QuestionFailed as e:
            headers = {"Retry-After": "5"} if e.http_status == 503 else None
            raise Problem(e.http_status, str(e), code=e.code, headers=headers) from None
        except (OSError, ConnectionError) as e:
            raise Problem(503, f"Redis is unavailable ({type(e).__name__}); try again", code="queue_unavailable",
                          headers={"Retry-After": "5"}) from None
        finally:
            self._admitted.release()


# -------------------------------------------------------------------- views
def video_view(rec: VideoRecord, shard: str = "") -> dict:
    # While a video streams in, its plan is not written yet: the sampling plan's count stands in.
    total = rec.chunks_total or rec.chunks_expected
    progress = 1.0 if rec.status is Status.READY else (min(rec.chunks_done / total, 0.999) if total else 0.0)
    url = f"/v1/videos/{rec.video_id}"
    return {"id": rec.video_id, "status": rec.status.value, "filename": rec.filename,
            "duration": round(rec.duration, 3), "fps": round(rec.fps, 3), "container": rec.container,
            "codec": rec.codec, "sample_fps": round(rec.sample_fps, 6), "chunks_total": total, "chunks_done": rec.chunks_done,
            "progress": round(progress, 4), "error": rec.reason if rec.status is Status.FAILED else "",
            "note": rec.reason if rec.status is not Status.FAILED else "",
            "created": rec.created, "updated": rec.updated, "status_url": url, "events_url": url + "/events",
            "text_channels": (rec.extra or {}).get("text", {}), "transcript_url": url + "/transcript",
            "shard": shard or None}


def job_view(job: dict) -> dict:
    out = {k: v for k, v in job.items() if k != "tenant"}
    out["status_url"] = f"/v1/jobs/{job['id']}"
    out["results_url"] = f"/v1/jobs/{job['id']}/results"
    return out


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
