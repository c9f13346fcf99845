"""The Celery app, configured from settings (broker and result backend: VIDEOKV_REDIS_URL).

    celery -A videokv.workers.app worker -Q ingest,query -c 1      (or: videokv worker)

Reliability: tasks are acknowledged *after* they finish (`task_acks_late`) and a task whose
worker process dies is put back on its queue (`task_reject_on_worker_lost`); a worker takes
one task at a time (`worker_prefetch_multiplier=1`). A whole worker host that vanishes has
its unacked tasks re-delivered by Redis after `VIDEOKV_VISIBILITY_TIMEOUT` seconds. Every
task is idempotent, so a re-delivery only finishes what was left.

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
        broker_connection_retry_on_startup=True,
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
