"""`videokv worker [--queues ingest,query] [--concurrency N] [--shard NAME]`: a Celery worker process."""

from __future__ import annotations

import argparse
import os


def main_worker(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv worker", description="Run a Celery worker (broker: VIDEOKV_REDIS_URL).")
    ap.add_argument("--queues", default="ingest,query", help="comma-separated: ingest (prefill), query (batch jobs)")
    ap.add_argument("--concurrency", "-c", type=int, default=1, help="worker processes (each loads the model)")
    ap.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"],
                    help="Celery pool: prefork (a child process per task slot), solo, threads")
    ap.add_argument("--loglevel", default="INFO", help="DEBUG, INFO, WARNING, ...")
    ap.add_argument("--shard", help="the shard this worker belongs to (VIDEOKV_SHARD): it takes that shard's "
                                    "queues (ingest.NAME, query.NAME) and its VIDEOKV_HOME holds that shard's KV")
    ap.add_argument("--metrics-port", type=int, default=None,
                    help="serve Prometheus /metrics on this port (default VIDEOKV_WORKER_METRICS_PORT; 0: none)")
    args = ap.parse_args(argv)
    if args.shard:
        os.environ["VIDEOKV_SHARD"] = args.shard
    if args.metrics_port is not None:
        os.environ["VIDEOKV_WORKER_METRICS_PORT"] = str(args.metrics_port)
    from videokv.runtime import load_settings
    from videokv.services import celery_app
    from videokv.workers.shards import Names

    names = Names(load_settings().shard)
    queues = ",".join({"ingest": names.ingest_queue, "query": names.query_queue}.get(q.strip(), q.strip())
                      for q in args.queues.split(","))
    app = celery_app()

    # A node name per process: several workers (shards) may run on one host.
    node = f"{names.shard or 'videokv'}-{os.getpid()}@%h"
    app.worker_main(["worker", "-Q", queues, "-n", node, "-c", str(args.concurrency), "--pool", args.pool,
                     "--loglevel", args.loglevel])
    return 0


main = main_worker
