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
    videokv:shard:NAME:procs            set of its processes, "role:host-pid" (api, worker)
    videokv:shard:NAME:alive:{member}   key with a TTL, refreshed every second by that process;
                                        query workers are counted from their own heartbeats

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


def check_name(name: str, label: str = "") -> str:
    """A shard name as Redis keys and Celery queues use it; ValueError with a sentence if not
    (it starts with `label`, default "shard name 'NAME'")."""
    if name and not re.fullmatch(SHARD_NAME, name):
        raise ValueError(f"{label or f'shard name {name!r}'}: use 1-32 of a-z, 0-9, '-' and '_', "
                         "starting with a letter or digit")
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


def procs_key(name: str) -> str:
    """The set of a shard's processes ("role:ident") that ever heartbeat (stale ones pruned)."""
    return f"videokv:shard:{name}:procs"


def alive_key(name: str, member: str) -> str:
    return f"videokv:shard:{name}:alive:{member}"


class Heartbeat:
    """Registers one process of a shard and keeps its liveness key fresh from a daemon thread.
    info: written into the shard's hash (the API's `url`). Everything is written on every
    beat, so a Redis that restarted without its data learns the shard again within a second."""

    def __init__(self, redis, shard: str, role: str, info: dict | None = None):
        self.r, self.shard, self.role, self.info = redis, check_name(shard), role, info or {}
        self.member = f"{role}:{socket.gethostname()}-{os.getpid()}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"videokv-shard-{role}", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pipe = self.r.pipeline()
                pipe.sadd(SHARDS, self.shard)
                if self.info:
                    pipe.hset(shard_key(self.shard), mapping=self.info)
                pipe.sadd(procs_key(self.shard), self.member)
                pipe.set(alive_key(self.shard, self.member), json.dumps({"pid": os.getpid()}), ex=ALIVE_TTL_S)
                pipe.execute()
            except Exception as e:         # noqa: BLE001 - Redis blips: beat again next second
                log.warning("shard heartbeat failed: %s", e)
            self._stop.wait(HEARTBEAT_S)

    def stop(self) -> None:
        self._stop.set()
        try:
            self.r.delete(alive_key(self.shard, self.member))
        except Exception:                  # noqa: BLE001
            pass


def alive_members(r, members_key: str, key_of) -> dict[str, bytes]:
    """{member: its liveness key's value} of a set's members whose key exists (sorted);
    the others are pruned from the set."""
    members = sorted(x.decode() for x in r.smembers(members_key))
    if not members:
        return {}
    beats = r.mget([key_of(m) for m in members])
    gone = [m for m, b in zip(members, beats) if b is None]
    if gone:
        r.srem(members_key, *gone)
    return {m: b for m, b in zip(members, beats) if b is not None}


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
    """Every registered shard and how many of its processes heartbeat now (no key scans: each
    shard keeps the set of its processes)."""
    out = {}
    for name in sorted(x.decode() for x in r.smembers(SHARDS)):
        roles = [m.split(":", 1)[0] for m in alive_members(r, procs_key(name), lambda m, n=name: alive_key(n, m))]
        names = Names(name)
        # Query workers heartbeat under their shard's names (workers/questions.py).
        query = len(alive_members(r, names.qworkers, names.qworker))
        url = (r.hget(shard_key(name), "url") or b"").decode()
        out[name] = ShardState(name, url, roles.count("api"), roles.count("worker"), query)
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

