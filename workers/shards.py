"""Shards: the Redis names and Celery queues of one shard, the registry every shard process
heartbeats into, and placement of new uploads.

A shard is a host (or a set of processes) that owns one VIDEOKV_HOME: the LMDB KV, the
embeddings and FAISS indexes, the uploaded files of its videos. Its processes run with
VIDEOKV_SHARD=NAME (`videokv serve|worker|query-worker --shard NAME`) and use only their
shard's names, so its work never reaches a process that lacks the bytes:

    Celery queues   ingest.NAME, query.NAME            (single host: ingest, query)
    questions       videokv:NAME:questions (stream)    (single host: videokv:questions)
    query workers   videokv:NAME:qworkers, videokv:NAME:qworker:{id}, videokv:NAME:engine
    leases          videokv:NAME:lease:{video}, videokv:NAME:started, videokv:NAME:requeue:{video}

Registry (read by the front API, docs/service.md "Shards"):

    videokv:shards                      set of shard names ever registered
    videokv:shard:NAME                  hash {url}: where the shard's API listens
    videokv:shard:NAME:alive:{role}:{id}  key with a TTL, refreshed every second by each
                                        process of the shard (role: api, worker); query
                                        workers are counted from their own heartbeats

Placement is rendezvous hashing of the upload's placement key (the SHA-256 of its first
4 MiB: api/front/upload.py) over the shards whose API is alive: the same bytes go to the
same shard while the set of shards does not change, and adding a shard moves only the
uploads whose top score becomes the new shard (about 1/n of them). The front also remembers
where each key went (`videokv:placed:{key}`), so bytes uploaded before a shard was added
keep landing where their KV already is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass

log = logging.getLogger("videokv.shards")

SHARD_NAME = r"[a-z0-9][a-z0-9_-]{0,31}"
SHARDS = "videokv:shards"
HEARTBEAT_S = 1.0
ALIVE_TTL_S = 4
VIDEO_SHARD = "videokv:placement"          # hash video id -> shard (written by the front)


def check_name(name: str) -> str:
    """A shard name as Redis keys and Celery queues use it; ValueError with a sentence if not."""
    if name and not re.fullmatch(SHARD_NAME, name):
        raise ValueError(f"shard name {name!r}: use 1-32 of a-z, 0-9, '-' and '_', starting with a letter or digit")
    return name


@dataclass(frozen=True)
class Names:
    """The Redis keys and Celery queues of one shard; shard "" = the single-host names."""

    shard: str = ""

    @property
    def prefix(self) -> str:
        return f"videokv:{self.shard}:" if self.shard else "videokv:"

    def _queue(self, base: str) -> str:
        return f"{base}.{self.shard}" if self.shard else base

    @property
    def ingest_queue(self) -> str:
        return self._queue("ingest")

    @property
    def query_queue(self) -> str:
        return self._queue("query")

    @property
    def questions(self) -> str:
        return self.prefix + "questions"

    @property
    def qworkers(self) -> str:
        return self.prefix + "qworkers"

    @property
    def engine(self) -> str:
        return self.prefix + "engine"

    def qworker(self, worker: str) -> str:
        return f"{self.prefix}qworker:{worker}"

    def lease(self, video_id: str) -> str:
        return f"{self.prefix}lease:{video_id}"

    @property
    def started(self) -> str:
        return self.prefix + "started"

    def requeue(self, video_id: str) -> str:
        return f"{self.prefix}requeue:{video_id}"


def shard_key(name: str) -> str:
    return f"videokv:shard:{name}"


def alive_key(name: str, role: str, ident: str) -> str:
    return f"videokv:shard:{name}:alive:{role}:{ident}"


class Heartbeat:
    """Registers one process of a shard and keeps its liveness key fresh from a daemon thread.
    info: written once into the shard's hash (the API's `url`)."""

    def __init__(self, redis, shard: str, role: str, info: dict | None = None):
        self.r, self.shard, self.role, self.info = redis, check_name(shard), role, info or {}
        self.ident = f"{socket.gethostname()}-{os.getpid()}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"videokv-shard-{role}", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def _run(self) -> None:
        registered = False
        while not self._stop.is_set():
            try:
                if not registered:
                    self.r.sadd(SHARDS, self.shard)
                    if self.info:
                        self.r.hset(shard_key(self.shard), mapping=self.info)
                    registered = True
                self.r.set(alive_key(self.shard, self.role, self.ident), json.dumps({"pid": os.getpid()}),
                           ex=ALIVE_TTL_S)
            except Exception as e:         # noqa: BLE001 - Redis blips: beat again next second
                log.warning("shard heartbeat failed: %s", e)
            self._stop.wait(HEARTBEAT_S)

    def stop(self) -> None:
        self._stop.set()
        try:
            self.r.delete(alive_key(self.shard, self.role, self.ident))
        except Exception:                  # noqa: BLE001
            pass


@dataclass
class ShardState:
    name: str
    url: str
    api: int                # live API processes
    workers: int            # live Celery workers
    query_workers: int      # live query workers

    @property
    def up(self) -> bool:
        return self.api > 0 and bool(self.url)

    def view(self) -> dict:
        return {"name": self.name, "status": "up" if self.up else "down", "api": self.api,
                "workers": self.workers, "query_workers": self.query_workers}


def shard_states(r) -> dict[str, ShardState]:
    """Every registered shard and how many of its processes heartbeat now."""
    names = sorted(x.decode() for x in r.smembers(SHARDS))
    out = {}
    for name in names:
        counts = {"api": 0, "worker": 0}
        for key in r.scan_iter(match=f"videokv:shard:{name}:alive:*", count=1000):
            role = key.decode().rsplit(":", 2)[-2]
            counts[role] = counts.get(role, 0) + 1
        # Query workers heartbeat under their shard's names (workers/questions.py).
        query = sum(1 for _ in r.scan_iter(match=Names(name).qworker("*"), count=1000))
        url = (r.hget(shard_key(name), "url") or b"").decode()
        out[name] = ShardState(name, url, counts["api"], counts.get("worker", 0), query)
    return out


def rendezvous(content: str, shards: list[str]) -> list[str]:
    """The shards in placement order for this content (highest score first)."""
    def score(s: str) -> bytes:
        return hashlib.sha256(f"{s}\x00{content}".encode()).digest()
    return sorted(shards, key=score, reverse=True)


def front_job_key(job_id: str) -> str:
    """The front API's record of a job whose parts run on the shards (hash)."""
    return f"videokv:job:{job_id}"


def placed_key(key: str) -> str:
    return f"videokv:placed:{key}"

