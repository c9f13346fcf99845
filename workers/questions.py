"""Questions between the API (or a batch job) and the query workers, over Redis streams.

    requests  XADD videokv:questions {m: json}       read by the consumer group `qworkers`
              (a shard's: videokv:{shard}:questions, and so on; workers/shards.py):
              {id, kind: ask|search, reply: stream, stream: bool, ...the question}
    replies   XADD videokv:replies:{client} {m: json}, the client's own stream:
              {id, kind: accepted, worker}   a worker took it
              {id, kind: token, text}        a piece of the answer (streamed questions only)
              {id, kind: answer, answer}     done (search: {kind: hits, hits: {results, moments,
                                             next_page_token}})
              {id, kind: error, status, code, detail}
    liveness  SET videokv:qworker:{worker} EX 5, refreshed every second; SADD videokv:qworkers
    engine    HSET videokv:engine: the fingerprint the workers answer with (uploads are keyed
              by it, so the API needs no model to register a video)

Why streams rather than a Celery queue: a question needs its tokens back as they are made,
and a Celery task has one result; a round trip through Celery's result backend polls. Each
stream hop is one XADD and one blocking XREAD that wakes at once (bench/service.py measures
the whole API -> worker -> API overhead: `api_hop_ms`).

`QuestionClient` is thread-based (one reader thread per process); the API wraps its futures
for asyncio. A question whose worker stops heartbeating is sent again once (unless some of
its tokens already went out), else it fails with a 503 `worker_lost`; none ever waits past
its timeout.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from videokv.errors import VideoKVError

from .shards import Names, alive_members

log = logging.getLogger("videokv.questions")

GROUP = "qworkers"
HEARTBEAT_S = 1.0
LIVENESS_S = 5


def reply_stream(client: str) -> str:
    return f"videokv:replies:{client}"


class QuestionFailed(VideoKVError):
    """A question the query workers refused or could not finish: HTTP `status`, `code`."""

    def __init__(self, detail: str, code: str = "error", status: int = 400):
        super().__init__(detail)
        self.code, self.http_status = code, status


def live_workers(r, names: Names = Names()) -> dict[str, dict]:
    """{worker id: its heartbeat (fingerprint, max_batch, in flight)} of this shard's workers
    alive now."""
    return {w: json.loads(b) for w, b in alive_members(r, names.qworkers, names.qworker).items()}


def announced_engine(r, names: Names = Names()) -> dict | None:
    """The engine this shard's query workers last announced ({fingerprint, model, ...}), if any."""
    raw = r.hgetall(names.engine)
    return {k.decode(): v.decode() for k, v in raw.items()} or None


@dataclass
class _Pending:
    payload: dict
    future: Future
    on_token: Callable[[str], None] | None
    deadline: float
    tries: int = 1
    worker: str | None = None
    tokens: int = 0
    sent_at: float = field(default_factory=time.monotonic)


class QuestionClient:
    """Sends questions to the query workers and routes their replies. redis: a redis.Redis
    (thread-safe); timeout_s: the longest a question may take, queueing included; names: the
    shard whose workers answer (workers/shards.py)."""

    def __init__(self, redis, timeout_s: float = 600.0, retries: int = 1, names: Names = Names()):
        self.r, self.timeout_s, self.retries, self.names = redis, timeout_s, retries, names
        self.id = secrets.token_hex(8)
        self.stream = reply_stream(self.id)
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._alive: tuple[float, dict] = (-1e9, {})
        self._reader = threading.Thread(target=self._read, name="videokv-replies", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ sending
    def ask(self, video_id: str, question: str, *, stream: bool = False,
            on_token: Callable[[str], None] | None = None, **params) -> Future:
        """The question's Future: the Answer's dict, or QuestionFailed. on_token gets each text
        piece as the worker makes it (stream=True)."""
        return self._submit({"kind": "ask", "video_id": video_id, "question": question, "stream": bool(stream),
                             "params": params}, on_token)

    def search(self, query: str, top_k: int, *, tenant: str, video_ids: list[str] | None = None,
               limit: int = 10, page_token: str | None = None, min_score: float | None = None) -> Future:
        """Future of {"results": the top_k chunks [{video_id, chunk, score}] (QueryEngine.search),
        "moments": a page of moments [{video_id, start, end, score, source, chunk, text}]
        (QueryEngine.moments), "next_page_token"}, best first."""
        return self._submit({"kind": "search", "query": query, "top_k": top_k, "tenant": tenant,
                             "video_ids": video_ids, "limit": limit, "page_token": page_token,
                             "min_score": min_score}, None)

    def alive(self) -> dict[str, dict]:
        """The live query workers, as the reader thread last saw them (at most ~1 s old;
        asked of Redis when older, or when none were seen: a worker just started counts)."""
        at, alive = self._alive
        if not alive or time.monotonic() - at > 2.0:
            alive = live_workers(self.r, self.names)
            self._alive = (time.monotonic(), alive)
        return alive

    def _submit(self, payload: dict, on_token) -> Future:
        if not self.alive():
            raise QuestionFailed("no query worker is running: start one with `videokv query-worker`", "no_query_worker",
                                 503)
        rid = secrets.token_hex(8)
        payload = {**payload, "id": rid, "reply": self.stream}
        p = _Pending(payload, Future(), on_token, time.monotonic() + self.timeout_s)
        with self._lock:
            self._pending[rid] = p
        self._send(payload)
        return p.future

    def _send(self, payload: dict) -> None:
        self.r.xadd(self.names.questions, {"m": json.dumps(payload)}, maxlen=100_000, approximate=True)

    # ------------------------------------------------------------------ replies
    def _read(self) -> None:
        last, checked = "$", 0.0
        while True:                         # a daemon thread; the reply stream expires an hour after use
            try:
                got = self.r.xread({self.stream: last}, block=500, count=256)
            except Exception as e:          # noqa: BLE001 - Redis blips: keep trying, questions time out
                log.warning("reading replies failed: %s", e)
                time.sleep(0.5)
                got = []
            for _, entries in got:
                for mid, fields in entries:
                    last = mid
                    self._route(json.loads(fields[b"m"]))
            if time.monotonic() - checked > 1.0:
                checked = time.monotonic()
                self._check()

    def _route(self, m: dict) -> None:
        with self._lock:
            p = self._pending.get(m["id"])
        if p is None or p.future.done():
            return
        kind = m["kind"]
        if kind == "accepted":
            p.worker = m["worker"]
        elif kind == "token":
            p.tokens += 1
            if p.on_token is not None:
                try:
                    p.on_token(m["text"])
                except Exception:            # noqa: BLE001 - a client gone away
                    p.on_token = None
        else:
            self._done(m["id"])
            if kind == "error":
                p.future.set_exception(QuestionFailed(m["detail"], m.get("code", "error"), int(m.get("status", 400))))
            else:
                p.future.set_result(m.get("answer", m.get("hits")))

    def _done(self, rid: str) -> None:
        with self._lock:
            self._pending.pop(rid, None)

    def _check(self) -> None:
        """Questions past their deadline fail; those whose worker died go again once."""
        with self._lock:
            pending = list(self._pending.items())
        if not pending:
            return
        now = time.monotonic()
        try:
            alive = live_workers(self.r, self.names)
        except Exception:                  # noqa: BLE001
            return
        self._alive = (now, alive)
        for rid, p in pending:
            if now > p.deadline:
                self._done(rid)
                p.future.set_exception(QuestionFailed(f"no answer within {self.timeout_s:.0f} s", "timeout", 504))
            elif p.worker is not None and p.worker not in alive:
                self._done(rid)
                if p.tokens == 0 and p.tries <= self.retries and alive:
                    log.warning("query worker %s died; sending question %s again", p.worker, rid)
                    retry = {**p.payload, "id": secrets.token_hex(8)}
                    with self._lock:
                        self._pending[retry["id"]] = _Pending(retry, p.future, p.on_token, p.deadline, p.tries + 1)
                    self._send(retry)
                else:
                    p.future.set_exception(QuestionFailed(
                        f"the query worker answering this question ({p.worker}) stopped; ask again",
                        "worker_lost", 503))
            elif p.worker is None and not alive and now - p.sent_at > LIVENESS_S:
                self._done(rid)
                p.future.set_exception(QuestionFailed("no query worker is running: start one with "
                                                      "`videokv query-worker`", "no_query_worker", 503))
