"""Ingest leases: a worker that dies takes its lease with it, and its video is re-queued in
seconds rather than after Redis's visibility timeout (an hour by default).

A worker ingesting a video holds a lease in Redis (`videokv:lease:<video>`, TTL `ttl` s),
renewed by a thread every ttl/3 s while it works, and marks the video as started
(`videokv:started`, a hash video -> owner). A shard's workers use their shard's keys
(workers/shards.py), so a reaper only ever re-queues its own shard's videos. A host that vanishes renews nothing: its lease
expires. Every worker runs a reaper (at start, then every `ttl/3` s) that re-sends the ingest
task of each started video without a live lease (once per lapse: `videokv:requeue:<video>`).
The re-delivered original task later finds the video READY, or leased by another worker,
and does nothing; chunk commits are idempotent, so no chunk is ever stored twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from contextlib import contextmanager

from .shards import Names

log = logging.getLogger("videokv.workers")

TTL_S = 30


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Leases:
    def __init__(self, redis_url: str, ttl: int = TTL_S, names: Names = Names()):
        import redis

        self.r = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.ttl, self.names = ttl, names

    def key(self, video_id: str) -> str:
        return self.names.lease(video_id)

    def alive(self, video_id: str) -> bool:
        return bool(self.r.exists(self.key(video_id)))

    @contextmanager
    def hold(self, video_id: str):
        """Yields True while this process holds the video's lease (renewed in the background),
        False when another live worker holds it (then do nothing)."""
        me = owner_id()
        if not self.r.set(self.key(video_id), me, nx=True, ex=self.ttl):
            yield False
            return
        self.r.hset(self.names.started, video_id, me)
        stop = threading.Event()

        def renew():
            while not stop.wait(self.ttl / 3):
                try:
                    self.r.set(self.key(video_id), me, xx=True, ex=self.ttl)
                except Exception as e:  # noqa: BLE001 - Redis blips: the next renewal retries
                    log.warning("lease renewal of %s failed: %s", video_id, e)

        thread = threading.Thread(target=renew, name=f"lease-{video_id}", daemon=True)
        thread.start()
        try:
            yield True
        finally:
            stop.set()
            thread.join(timeout=5)
            if self.r.get(self.key(video_id)) == me.encode():
                self.r.delete(self.key(video_id))

    def finished(self, video_id: str) -> None:
        """The video is READY, FAILED or deleted: nothing to watch any more."""
        self.r.hdel(self.names.started, video_id)

    def stale(self) -> list[str]:
        """Started videos whose lease lapsed: their worker is gone."""
        started = [v.decode() for v in self.r.hkeys(self.names.started)]
        return [v for v in started if not self.alive(v)]

    def requeue(self, video_id: str, send) -> bool:
        """send(video_id) if the video was started and its lease lapsed, once per lapse."""
        if not self.r.hexists(self.names.started, video_id) or self.alive(video_id):
            return False
        if not self.r.set(self.names.requeue(video_id), "1", nx=True, ex=self.ttl):
            return False
        log.warning("video %s: its worker's lease lapsed; ingest re-queued", video_id)
        send(video_id)
        return True

    def requeue_stale(self, send) -> list[str]:
        """send(video_id) for each stale video, once per lapse; returns them."""
        return [v for v in self.stale() if self.requeue(v, send)]


def start_reaper(leases: Leases, send, every_s: float | None = None) -> threading.Event:
    """A daemon thread that re-queues stale ingests now and every `every_s` s; set the
    returned event to stop it."""
    stop = threading.Event()
    every_s = every_s or leases.ttl / 3

    def loop():
        while True:
            try:
                leases.requeue_stale(send)
            except Exception as e:  # noqa: BLE001 - Redis down: try again next round
                log.warning("lease reaper: %s", e)
            if stop.wait(every_s):
                return

    threading.Thread(target=loop, name="lease-reaper", daemon=True).start()
    return stop
