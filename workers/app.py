"""The Celery app, configured from settings (broker and result backend: VIDEOKV_REDIS_URL).

    celery -A videokv.workers.app worker -Q ingest,query -c 1      (or: videokv worker)

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

from celery import Celery
from kombu import Queue

from videokv.settings import get_settings

INGEST_QUEUE = "ingest"
QUERY_QUEUE = "query"


def make_app(settings=None) -> Celery:
    s = settings or get_settings()
    app = Celery("videokv", broker=s.redis_url, backend=s.redis_url, include=["videokv.workers.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(INGEST_QUEUE), Queue(QUERY_QUEUE)],
        task_default_queue=QUERY_QUEUE,
        task_routes={
            "videokv.ingest_video": {"queue": INGEST_QUEUE},
            "videokv.reindex": {"queue": INGEST_QUEUE},
            "videokv.run_job": {"queue": QUERY_QUEUE},
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


app = make_app()

_rt = None
_rt_pid = None
_rt_lock = threading.Lock()


def runtime():
    """This process's Runtime (model and store load once per worker process)."""
    global _rt, _rt_pid
    with _rt_lock:
        if _rt is None or _rt_pid != os.getpid():
            from videokv.runtime import Runtime
            _rt, _rt_pid = Runtime(get_settings()), os.getpid()
        return _rt
