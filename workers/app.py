"""The Celery app, configured from settings (broker and result backend: VIDEOKV_REDIS_URL).

    videokv worker --queues ingest,query        (or: celery -A videokv.services worker -Q ingest,query)
    videokv worker --shard A                    (a shard's worker: queues ingest.A, query.A)

The app is built from settings by the composition root (`videokv.services`), which also
tells this module how to make the process's Runtime (`configure`).

Reliability: tasks are acknowledged *after* they finish (`task_acks_late`) and a task whose
worker process dies is put back on its queue (`task_reject_on_worker_lost`); a worker takes
one task at a time (`worker_prefetch_multiplier=1`). A whole worker host that vanishes has
its unacked tasks re-delivered by Redis after `VIDEOKV_VISIBILITY_TIMEOUT` seconds. Every
task is idempotent, so a re-delivery only finishes what was left. A Redis restart is
survived: the worker reconnects (no retry limit), running tasks keep running, and queued
and unacked task messages survive when Redis persists them (`appendonly yes`).

The Runtime (model, LMDB store) is created lazily in the process that runs the tasks,
never in the parent before the prefork pool forks.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from celery import Celery
from kombu import Queue

from .shards import Names


def make_app(settings) -> Celery:
    """The app of settings.shard: its tasks go to that shard's queues (ingest.NAME,
    query.NAME; a single host: ingest, query)."""
    s = settings
    names = Names(s.shard)
    app = Celery("videokv", broker=s.redis_url, backend=s.redis_url, include=["videokv.workers.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(names.ingest_queue), Queue(names.query_queue)],
        task_default_queue=names.query_queue,
        task_routes={
            "videokv.ingest_video": {"queue": names.ingest_queue},
            "videokv.reindex": {"queue": names.ingest_queue},
            "videokv.run_job": {"queue": names.query_queue},
        },
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=7 * 24 * 3600,
        broker_transport_options={"visibility_timeout": s.visibility_timeout},
        result_backend_transport_options={"visibility_timeout": s.visibility_timeout},
        # Redis restarts (or blips): the worker keeps reconnecting forever instead of exiting
        # after 100 tries; a task already running keeps running (its progress goes to LMDB,
        # not Redis); result/state writes retry until Redis is back, so an ingest that
        # finishes during an outage is never reported as failed.
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        result_backend_always_retry=True,
        result_backend_max_retries=60,
        result_backend_max_sleep_between_retries_ms=5000,
        worker_hijack_root_logger=False,
        task_track_started=True,
    )
    return app


_factory: Callable[[], object] | None = None
_rt = None
_rt_pid = None
_rt_lock = threading.Lock()


def configure(runtime_factory: Callable[[], object]) -> None:
    """How this process (and the prefork children it forks) makes its Runtime."""
    global _factory, _rt
    _factory, _rt = runtime_factory, None


def runtime():
    """This process's Runtime (model and store load once per worker process, after the fork)."""
    global _rt, _rt_pid
    with _rt_lock:
        if _rt is None or _rt_pid != os.getpid():
            if _factory is None:
                raise RuntimeError("workers.app.configure() was not called: start workers through "
                                   "`videokv worker` (or celery -A videokv.services)")
            _rt, _rt_pid = _factory(), os.getpid()
        return _rt
