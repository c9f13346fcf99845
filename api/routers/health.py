"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from videokv.workers.metrics import CONTENT_TYPE, exposition

from ..schemas import Health, Ready


def router(svc, models) -> APIRouter:
    r = APIRouter(tags=["health"])
    settings = svc.settings

    # async: answered on the event loop itself, never queued behind work in the thread pool
    # (a backlog of questions there once made a liveness probe wait 11 s).
    @r.get("/healthz", response_model=Health)
    async def healthz():
        return {"status": "ok"}

    @r.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
    def readyz():
        checks = {}
        where = Path(settings.home)
        while not where.exists() and where != where.parent:      # a home not made yet: its disk
            where = where.parent
        free = shutil.disk_usage(where).free
        ok_free = free >= settings.min_free_mb << 20
        checks["disk"] = (f"{'ok' if ok_free else 'error: low'} ({free >> 20} MiB free under VIDEOKV_HOME, "
                          f"needs {settings.min_free_mb} MiB: VIDEOKV_MIN_FREE_MB)")
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
            from videokv.workers.questions import live_workers
            alive = live_workers(svc.questions.r, svc.names)
            fps = sorted({b.get("fingerprint", "") for b in alive.values()})
            checks["query_workers"] = (f"ok ({len(alive)} running, fingerprint {', '.join(fps)})" if alive else
                                       "error: no query worker is running (start `videokv query-worker`)")
        except Exception as e:
            checks["query_workers"] = f"error: {type(e).__name__}: {e}"
        ok = all(v.startswith("ok") for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    @r.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}},
           description="Prometheus text format: this API process's questions and errors, the queue depths "
                       "and the videos by status (docs/service.md, Metrics). No key needed: no tenant's data.")
    def metrics():
        return Response(exposition(svc.metrics_registry), media_type=CONTENT_TYPE)

    return r
