"""`videokv worker [--queues ingest,query] [--concurrency N]`: a Celery worker process."""

from __future__ import annotations

import argparse


def main_worker(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv worker", description="Run a Celery worker (broker: VIDEOKV_REDIS_URL).")
    ap.add_argument("--queues", default="ingest,query", help="comma-separated: ingest (prefill), query (batch jobs)")
    ap.add_argument("--concurrency", "-c", type=int, default=1, help="worker processes (each loads the model)")
    ap.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"],
                    help="Celery pool: prefork (a child process per task slot), solo, threads")
    ap.add_argument("--loglevel", default="INFO", help="DEBUG, INFO, WARNING, ...")
    args = ap.parse_args(argv)
    from videokv.services import celery_app

    app = celery_app()

    app.worker_main(["worker", "-Q", args.queues, "-c", str(args.concurrency), "--pool", args.pool,
                     "--loglevel", args.loglevel])
    return 0


main = main_worker
