"""The REST API (FastAPI), versioned under /v1; OpenAPI at /openapi.json, docs at /docs.

    uvicorn --factory videokv.services:api_app          (or: videokv serve)

Ingest runs on Celery workers (queue `ingest`); batch jobs on queue `query`. Questions
(`POST /v1/videos/{id}/query`) and search go to the query workers (workers/questions.py);
this process holds no model. Every response for another tenant's object is a 404. Routers,
one per resource, are in api/routers/; the work behind them in api/service.py.

With VIDEOKV_SHARD this is one shard's API: it serves its own home's videos to the front API
(api/front/), which names the tenant (with the cluster token), and heartbeats its address.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import problems
from .limits import BodyLimit
from .routers import health, jobs, media, openai, questions, videos, web
from .schemas import request_models
from .service import Service


def create_app(settings, runtime) -> FastAPI:
    """settings: the Settings; runtime: the composition root's Runtime (videokv.services.api_app)."""
    svc = Service(settings, runtime)
    app = FastAPI(title="videokv", version="1", description=__doc__, lifespan=_shard_heartbeat(settings))
    app.state.service = svc
    problems.install(app, svc.metrics.errors)
    models = request_models(settings.max_question_chars, settings.max_answer_tokens)
    for module in (health, videos, media, questions, jobs, openai, web):
        app.include_router(module.router(svc, models))
    app.add_middleware(BodyLimit, max_bytes=settings.max_json_kb << 10)
    return app


def _shard_heartbeat(settings):
    """A shard's API registers its address and heartbeats while it serves (workers/shards.py)."""
    if not settings.shard:
        return None
    if not settings.shard_url or not settings.cluster_token:
        raise ValueError(f"shard {settings.shard!r}: set VIDEOKV_SHARD_URL (where the front API reaches this API) "
                         "and VIDEOKV_CLUSTER_TOKEN (the secret shared with the front API); `videokv serve --shard` "
                         "sets the URL from --host/--port")

    @asynccontextmanager
    async def lifespan(app):
        import redis

        from videokv.workers.shards import Heartbeat
        beat = Heartbeat(redis.Redis.from_url(settings.redis_url, socket_timeout=5), settings.shard, "api",
                         {"url": settings.shard_url}).start()
        try:
            yield
        finally:
            beat.stop()
    return lifespan
