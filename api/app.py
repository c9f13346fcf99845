"""The REST API (FastAPI), versioned under /v1; OpenAPI at /openapi.json, docs at /docs.

    uvicorn --factory videokv.services:api_app          (or: videokv serve)

Ingest runs on Celery workers (queue `ingest`); batch jobs on queue `query`. Interactive
questions (`POST /v1/videos/{id}/query`) and search run *in this process* for latency:
the model loads once here, questions are answered one at a time (a lock), each from the
stored KV cache (no video prefill). Every response for another tenant's object is a 404.
Routers, one per resource, are in api/routers/; the work behind them in api/service.py.
"""

from __future__ import annotations

from fastapi import FastAPI

from . import problems
from .limits import BodyLimit
from .routers import health, jobs, questions, videos
from .schemas import request_models
from .service import Service


def create_app(settings, runtime) -> FastAPI:
    """settings: the Settings; runtime: the composition root's Runtime (videokv.services.api_app)."""
    svc = Service(settings, runtime)
    app = FastAPI(title="videokv", version="1", description=__doc__)
    app.state.service = svc
    problems.install(app)
    models = request_models(settings.max_question_chars, settings.max_answer_tokens)
    for module in (health, videos, questions, jobs):
        app.include_router(module.router(svc, models))
    app.add_middleware(BodyLimit, max_bytes=settings.max_json_kb << 10)
    return app
