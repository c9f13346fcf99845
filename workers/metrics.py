"""Prometheus metrics (the text format of `prometheus_client`), one registry per process:

    API            GET /metrics: the questions its callers asked (end to end), its errors, and
                   at each scrape the queue depths (Redis) and the videos by status (the store)
    query worker   --metrics-port: the questions it decoded, KV paged, hot-set hits and misses
    Celery worker  VIDEOKV_WORKER_METRICS_PORT: ingest frames and chunks, failed ingests; its
                   prefork children count through prometheus_client's multiprocess mode (files
                   under HOME/run/metrics/, summed by the parent's HTTP server)

Every family name is listed in docs/service.md "Metrics", with a scrape config.

prometheus_client is imported inside the functions: its multiprocess mode is chosen at its
first import from PROMETHEUS_MULTIPROC_DIR, which a Celery worker sets first
(`prepare_celery_worker`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("videokv.metrics")

# Seconds: an interactive answer on the toy default takes ~0.1-2 s on a CPU, a 7B model's
# long contexts several seconds; batch jobs' questions wait longer.
TIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class QuestionMetrics:
    """What a process saw of the questions it handled: the API (callers' view, including the
    queueing) and the query worker (decoding). status: "ok" or the error's code."""

    def __init__(self, registry):
        from prometheus_client import Counter, Histogram
        self.questions = Counter("videokv_questions", "Questions answered, by mode and outcome (ok or the error code)",
                                 ["mode", "status"], registry=registry)
        self.ttft = Histogram("videokv_ttft_seconds", "Time to the first answer token", ["mode"],
                              buckets=TIME_BUCKETS, registry=registry)
        self.answer = Histogram("videokv_answer_seconds", "Time to the whole answer", ["mode"],
                                buckets=TIME_BUCKETS, registry=registry)
        self.kv_bytes = Counter("videokv_kv_bytes_paged", "KV bytes paged into the questions' contexts",
                                registry=registry)
        self.errors = Counter("videokv_errors", "Errors reported, by code", ["code"], registry=registry)

    def answered(self, mode: str, answer: dict, seconds: float, ttft_s: float | None = None) -> None:
        """answer: the Answer's dict (query/answers.py); ttft_s: None takes the answer's own."""
        self.questions.labels(mode, "ok").inc()
        if ttft_s is None:
            ttft_s = float((answer.get("timings") or {}).get("ttft_ms", seconds * 1e3)) / 1e3
        self.ttft.labels(mode).observe(ttft_s)
        self.answer.labels(mode).observe(seconds)
        self.kv_bytes.inc(int(answer.get("kv_bytes_loaded") or 0))

    def failed(self, mode: str, code: str) -> None:
        self.questions.labels(mode, code or "internal").inc()


def api_registry(videos, redis, names):
    """The API's registry and its QuestionMetrics; videos by status and queue depths are read
    at each scrape. videos() -> every VideoRecord; redis() -> a redis.Redis; names: the
    shard's Names (workers/shards.py)."""
    from prometheus_client import CollectorRegistry
    registry = CollectorRegistry()
    registry.register(_StateCollector(videos, redis, names))
    return registry, QuestionMetrics(registry)


class _StateCollector:
    """videokv_videos{status} and videokv_queue_depth{queue}, read when scraped."""

    def __init__(self, videos, redis, names):
        self.videos, self.redis, self.names = videos, redis, names

    def describe(self):
        return []                      # read at scrape time only: no checks at registration

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        videos = GaugeMetricFamily("videokv_videos", "Stored videos by status", labels=["status"])
        counts: dict[str, int] = {}
        for rec in self.videos():
            counts[rec.status.value] = counts.get(rec.status.value, 0) + 1
        for status, n in sorted(counts.items()):
            videos.add_metric([status], n)
        yield videos
        depth = GaugeMetricFamily("videokv_queue_depth", "Messages waiting or in flight, by queue "
                                  "(ingest and query: Celery tasks; questions: the query workers' stream)",
                                  labels=["queue"])
        try:
            pipe = self.redis().pipeline(transaction=False)
            pipe.llen(self.names.ingest_queue).llen(self.names.query_queue).xlen(self.names.questions)
            ingest, query, questions = pipe.execute()
        except Exception as e:         # noqa: BLE001 - Redis down: no depths, the rest still scrapes
            log.warning("queue depths unavailable: %s", e)
            return
        for q, n in (("ingest", ingest), ("query", query), ("questions", questions)):
            depth.add_metric([q], n)
        yield depth


def query_worker_registry(hot_cache):
    """The query worker's registry, its QuestionMetrics, and the hot-set cache's hits and
    misses (HotSetCache counts them; read at each scrape)."""
    from prometheus_client import CollectorRegistry
    registry = CollectorRegistry()
    registry.register(_HotSetCollector(hot_cache))
    return registry, QuestionMetrics(registry)


class _HotSetCollector:
    def __init__(self, hot_cache):
        self.hot = hot_cache

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        yield CounterMetricFamily("videokv_hotset_hits", "Questions whose video's hot set was in memory",
                                  value=self.hot.hits)
        yield CounterMetricFamily("videokv_hotset_misses", "Hot sets read from the store", value=self.hot.misses)
        yield GaugeMetricFamily("videokv_hotset_bytes", "Bytes of hot sets held in memory", value=self.hot.bytes)


class IngestMetrics:
    """The Celery worker's: frames and chunks prefilled (counted when an ingest run ends), and
    ingests that failed."""

    def __init__(self, registry=None):
        from prometheus_client import Counter
        kw = {"registry": registry} if registry is not None else {}
        self.frames = Counter("videokv_ingest_frames", "Sampled frames prefilled and stored", **kw)
        self.chunks = Counter("videokv_ingest_chunks", "Chunks prefilled, compressed and stored", **kw)
        self.errors = Counter("videokv_errors", "Errors reported, by code", ["code"], **kw)


_ingest: IngestMetrics | None = None


def ingest_metrics() -> IngestMetrics:
    """This process's IngestMetrics (the default registry: in a Celery worker set up by
    prepare_celery_worker, a file of the multiprocess directory)."""
    global _ingest
    if _ingest is None:
        _ingest = IngestMetrics()
    return _ingest


def prepare_celery_worker(port: int, host: str, run_dir: Path) -> None:
    """Before anything imports prometheus_client in this process: a fresh multiprocess
    directory (the Celery parent and its prefork children write their counters there), and
    an HTTP server for them started when the worker starts."""
    path = Path(run_dir) / "metrics" / f"worker-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    from celery.signals import worker_init, worker_shutdown

    @worker_init.connect(weak=False)
    def _serve(**_):
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(path))
        start_http_server(port, host, registry=registry)
        log.info("worker metrics on http://%s:%d/metrics", host, port)

    @worker_shutdown.connect(weak=False)
    def _clean(**_):
        shutil.rmtree(path, ignore_errors=True)


def serve_registry(registry, port: int, host: str) -> None:
    """/metrics of `registry` on host:port, from a daemon thread."""
    from prometheus_client import start_http_server
    start_http_server(port, host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)


def exposition(registry) -> bytes:
    from prometheus_client import generate_latest
    return generate_latest(registry)
