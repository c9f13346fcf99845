"""`videokv query-worker`: one process per device owns the model and its hot-set cache and
answers the questions of every API process and batch job (workers/questions.py says how
they travel).

    reader    XREADGROUP from videokv:questions while there is room (at most 2 x max_batch
              taken, so a busy worker leaves questions to the others); an `ask` goes to the
              QuestionServer (query/serving.py: decoded in one batch with the others in
              flight), a `search` to the search thread (embedding a query never waits
              behind decoding)
    sender    one thread writes the replies, pipelined (a decode step's tokens for 32
              questions are one round trip, not 32)
    heartbeat SET videokv:qworker:{id} EX 5 every second, with the fingerprint and the load
A shard's query worker (VIDEOKV_SHARD) reads and heartbeats under its shard's names only.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from videokv.engine.decode import GenerationConfig
from videokv.errors import VideoKVError
from videokv.query.serving import QuestionServer

from .questions import GROUP, HEARTBEAT_S, LIVENESS_S
from .shards import Names

log = logging.getLogger("videokv.query_worker")


class QueryWorker:
    """engine: the QueryEngine (its model); redis: a redis.Redis; max_batch: questions decoded
    together (1: one at a time, the baseline); names: its shard's (workers/shards.py);
    metrics: a QuestionMetrics its questions are counted in (workers/metrics.py)."""

    def __init__(self, engine, redis, max_batch: int = 16, name: str | None = None, model: str = "",
                 names: Names = Names(), metrics=None):
        self.engine, self.r, self.max_batch = engine, redis, max(1, int(max_batch))
        self.metrics = metrics                # workers/metrics.QuestionMetrics, or None
        self.names = names
        self.id = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.model = model
        self.server = QuestionServer(engine, self.max_batch)
        self._outbox: queue.Queue = queue.Queue()
        self._search = ThreadPoolExecutor(max_workers=1, thread_name_prefix="videokv-search")
        self._inflight = 0
        self._room = threading.Condition()
        self._stop = threading.Event()       # stop taking questions
        self._closed = threading.Event()     # the threads end (after the questions in flight)
        self.answered = 0

    # ------------------------------------------------------------------ lifecycle
    def run(self, drain_s: float = 30.0) -> None:
        """Serve until stop() (SIGTERM through the CLI), then finish what is in flight."""
        try:
            self.r.xgroup_create(self.names.questions, GROUP, id="$", mkstream=True)
        except Exception as e:              # noqa: BLE001 - BUSYGROUP: it exists already
            if "BUSYGROUP" not in str(e):
                raise
        self.r.hset(self.names.engine, mapping={"fingerprint": self.engine.fingerprint, "model": self.model,
                                     "oracle": self.engine.oracle.identity, "announced_by": self.id})
        threads = [threading.Thread(target=f, name=f"videokv-{f.__name__.strip('_')}", daemon=True)
                   for f in (self._heartbeat, self._sender)]
        for t in threads:
            t.start()
        log.info("query worker %s: max_batch %d, fingerprint %s", self.id, self.max_batch, self.engine.fingerprint)
        try:
            self._read()
            self._drain(drain_s)
        finally:
            self._stop.set()
            self._closed.set()
            for t in threads:
                t.join(2)
            self.r.delete(self.names.qworker(self.id))
            self.r.srem(self.names.qworkers, self.id)
            self.server.close()

    def _drain(self, seconds: float) -> None:
        """Finish the questions in flight (up to `seconds`) before going."""
        deadline = time.monotonic() + seconds
        with self._room:
            while self._inflight and time.monotonic() < deadline:
                self._room.wait(0.2)

    def stop(self) -> None:
        self._stop.set()

    def _heartbeat(self) -> None:
        while not self._closed.is_set():
            beat = {"fingerprint": self.engine.fingerprint, "max_batch": self.max_batch, "in_flight": self._inflight,
                    "answered": self.answered, "pid": os.getpid()}
            try:
                self.r.set(self.names.qworker(self.id), json.dumps(beat), ex=LIVENESS_S)
                self.r.sadd(self.names.qworkers, self.id)
            except Exception as e:          # noqa: BLE001 - Redis blips: the next beat retries
                log.warning("heartbeat failed: %s", e)
            self._closed.wait(HEARTBEAT_S)

    # ------------------------------------------------------------------ requests
    def _read(self) -> None:
        while not self._stop.is_set():
            with self._room:
                while self._inflight >= 2 * self.max_batch and not self._stop.is_set():
                    self._room.wait(0.5)
                room = 2 * self.max_batch - self._inflight
            try:
                got = self.r.xreadgroup(GROUP, self.id, {self.names.questions: ">"}, count=room, block=500)
            except Exception as e:          # noqa: BLE001
                log.warning("reading questions failed: %s", e)
                time.sleep(0.5)
                continue
            for _, entries in got or []:
                for mid, fields in entries:
                    self._take(mid, json.loads(fields[b"m"]))

    def _take(self, mid, m: dict) -> None:
        self._reply(m, kind="accepted", worker=self.id)
        with self._room:
            self._inflight += 1
        received = time.perf_counter()
        if m["kind"] == "search":
            fut = self._search.submit(self._do_search, m)
        else:
            on_token = (lambda piece: self._reply(m, kind="token", text=piece)) if m.get("stream") else None
            try:
                fut = self.server.submit(m["video_id"], m["question"], on_token=on_token,
                                         **sampled(m.get("params", {})))
            except Exception as e:           # noqa: BLE001
                self._finish(mid, m, received, error=e)
                return
        fut.add_done_callback(lambda f: self._finish(mid, m, received, future=f))

    def _do_search(self, m: dict) -> dict:
        e, scope = self.engine, {"tenant": m["tenant"], "video_ids": m.get("video_ids")}
        hits = e.search(m["query"], int(m["top_k"]), **scope)
        moments, token = e.moments(m["query"], limit=int(m.get("limit") or 10), page_token=m.get("page_token"),
                                   min_score=m.get("min_score"), **scope)
        return {"results": [{"video_id": h.video_id, "chunk": int(h.chunk), "score": float(h.score)} for h in hits],
                "moments": [x.to_dict() for x in moments], "next_page_token": token}

    def _finish(self, mid, m: dict, received: float, future=None, error: BaseException | None = None) -> None:
        if future is not None:
            error = future.exception()
        if error is None:
            out = future.result()
            if m["kind"] == "search":
                self._reply(m, kind="hits", hits=out)
            else:
                d = out.to_dict()
                d["timings"]["worker_ms"] = round((time.perf_counter() - received) * 1e3, 2)
                self._reply(m, kind="answer", answer=d)
                if self.metrics:
                    self.metrics.answered(d.get("mode", ""), d, time.perf_counter() - received)
        else:
            fields = error_fields(error)
            self._reply(m, kind="error", **fields)
            if self.metrics and m["kind"] != "search":
                self.metrics.failed((m.get("params") or {}).get("mode", "bilevel"), fields["code"])
                self.metrics.errors.labels(fields["code"]).inc()
        self._outbox.put(("ack", mid))
        self.answered += 1
        with self._room:
            self._inflight -= 1
            self._room.notify()

    # ------------------------------------------------------------------ replies
    def _reply(self, m: dict, **fields) -> None:
        self._outbox.put((m["reply"], {"id": m["id"], **fields}))

    def _sender(self) -> None:
        """Write the replies queued since the last round trip in one pipeline."""
        while not self._closed.is_set() or not self._outbox.empty():
            try:
                batch = [self._outbox.get(timeout=0.2)]
            except queue.Empty:
                continue
            while True:
                try:
                    batch.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            pipe = self.r.pipeline(transaction=False)
            streams = set()
            for where, body in batch:
                if where == "ack":
                    pipe.xack(self.names.questions, GROUP, body)
                    pipe.xdel(self.names.questions, body)
                else:
                    pipe.xadd(where, {"m": json.dumps(body)}, maxlen=10_000, approximate=True)
                    streams.add(where)
            for s in streams:
                pipe.expire(s, 3600)
            try:
                pipe.execute()
            except Exception as e:          # noqa: BLE001 - the client times the question out
                log.warning("sending replies failed: %s", e)


def sampled(params: dict) -> dict:
    """A question's parameters, its `sampling` (temperature, top_p, seed, stop: the OpenAI
    endpoint's) made the generation config the engine takes."""
    params = dict(params)
    s = params.pop("sampling", None)
    if s:
        params["gen"] = GenerationConfig(max_new_tokens=int(params.get("max_new_tokens", 48)),
                                         temperature=float(s.get("temperature", 0.0)), top_p=float(s.get("top_p", 1.0)),
                                         seed=s.get("seed"), stop=("<|im_end|>", *map(str, s.get("stop") or ())))
    return params


def error_fields(e: BaseException) -> dict:
    """A failed question as the API reports it: HTTP status, code and a sentence."""
    if isinstance(e, VideoKVError):
        return {"status": int(getattr(e, "http_status", 400)), "code": e.code, "detail": str(e)}
    log.error("question failed", exc_info=e)
    return {"status": 500, "code": "internal", "detail": f"internal error in the query worker ({type(e).__name__}); "
                                                          "see its log"}


def serve(runtime, max_batch: int, metrics_at: tuple[int, str] = (0, "")) -> None:
    """Run a query worker over this process's Runtime until SIGTERM/SIGINT; metrics_at:
    (port, host) of its /metrics (port 0: none)."""
    import signal

    import redis
    r = redis.Redis.from_url(runtime.settings.redis_url, socket_timeout=10)
    engine = runtime.queries            # loads the model now, before taking questions
    shard = runtime.settings.shard
    metrics = None
    if metrics_at[0]:
        from .metrics import query_worker_registry, serve_registry
        registry, metrics = query_worker_registry(engine.hot)
        serve_registry(registry, *metrics_at)
    w = QueryWorker(engine, r, max_batch, model=runtime.settings.model, names=Names(shard), metrics=metrics)
    if shard:
        log.info("query worker of shard %s", shard)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: w.stop())
    w.run()
