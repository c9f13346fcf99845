"""`videokv query-worker [--max-batch N]`: the process that owns the model on one device and
answers the service's questions, decoded together (workers/query_worker.py)."""

from __future__ import annotations

import argparse
import logging
import os


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="videokv query-worker",
                                 description="Answer the API's questions and batch jobs' rows (Redis: VIDEOKV_REDIS_URL). "
                                             "Run one per GPU; VIDEOKV_DEVICE picks it.")
    ap.add_argument("--max-batch", type=int, default=None,
                    help="questions decoded together (default VIDEOKV_QUERY_MAX_BATCH; 1: one at a time)")
    ap.add_argument("--loglevel", default="INFO", help="DEBUG, INFO, WARNING, ...")
    ap.add_argument("--shard", help="answer this shard's questions (VIDEOKV_SHARD) from its VIDEOKV_HOME")
    ap.add_argument("--metrics-port", type=int, default=None,
                    help="serve Prometheus /metrics on this port (default VIDEOKV_QUERY_WORKER_METRICS_PORT; 0: none)")
    args = ap.parse_args(argv)
    if args.shard:
        os.environ["VIDEOKV_SHARD"] = args.shard
    if args.metrics_port is not None:
        os.environ["VIDEOKV_QUERY_WORKER_METRICS_PORT"] = str(args.metrics_port)
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from videokv.services import query_worker

    query_worker(max_batch=args.max_batch)
    return 0
