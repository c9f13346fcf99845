"""The long-running services, wired from settings (the composition root for servers).

    uvicorn --factory videokv.services:api_app          (videokv serve; a shard's: --shard NAME)
    uvicorn --factory videokv.services:front_app        (videokv serve --front: over the shards)
    celery -A videokv.services worker -Q ingest,query    (videokv worker)
    videokv query-worker                                 (one per GPU: the model, the questions)

`api_app()` builds the FastAPI app; the module attribute `app` is the Celery app, made on
first access (so importing this module for the API factory builds no Celery app).
"""

from __future__ import annotations

from .runtime import Runtime, load_settings


def api_app(settings=None):
    """The REST API over a Runtime built from `settings` (default: the environment)."""
    from .api.app import create_app
    settings = settings or load_settings()
    return create_app(settings, Runtime(settings))


def front_app(settings=None):
    """The front API of a sharded service (api/front/): no KV, no model; it routes to the shards."""
    from .api.front.app import create_front_app
    return create_front_app(settings or load_settings())


def celery_app(settings=None):
    """The Celery app; its task processes build their Runtime from the same settings."""
    from .workers.app import configure, make_app
    settings = settings or load_settings()
    if settings.worker_metrics_port:
        from .workers.metrics import prepare_celery_worker
        prepare_celery_worker(settings.worker_metrics_port, settings.metrics_host, settings.home / "run")
    configure(lambda: Runtime(settings))
    return make_app(settings)


def query_worker(settings=None, max_batch: int | None = None) -> None:
    """Serve questions with this process's model until SIGTERM (workers/query_worker.py)."""
    from .workers.query_worker import serve
    settings = settings or load_settings()
    serve(Runtime(settings), max_batch or settings.query_max_batch,
          (settings.query_worker_metrics_port, settings.metrics_host))


_celery = None


def __getattr__(name: str):
    # `celery -A videokv.services` looks up the module attribute `app`.
    global _celery
    if name == "app":
        if _celery is None:
            _celery = celery_app()
        return _celery
    raise AttributeError(name)
