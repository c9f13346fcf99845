"""The front API's view of the shards: who is up (the Redis registry), where a video lives
(the placement map), where new bytes go (rendezvous hashing), and HTTP to a shard's API.

A shard counts as up while its API heartbeats (workers/shards.py). A request for a video on
a shard that is down, or that does not answer, is a 503 naming the shard with Retry-After;
a fan-out (listing, search, job status) waits at most VIDEOKV_SHARD_TIMEOUT_S for each shard
and reports those that did not answer as `missing_shards`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx

from videokv.api.auth import CLUSTER_HEADER, TENANT_HEADER
from videokv.api.problems import Problem
from videokv.api.schemas import VIDEO_ID
from videokv.workers.shards import VIDEO_SHARD, ShardState, placed_key, rendezvous, shard_states

RETRY_AFTER_S = "10"
# Response headers of a shard that are not the front's to pass on.
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "proxy-authenticate",
               "proxy-authorization", "server", "date", "upgrade"}


def shard_unavailable(name: str, why: str) -> Problem:
    return Problem(503, f"shard {name!r}, which holds this video, is unavailable ({why}); its other videos wait "
                        "for it, every other shard keeps answering: try again shortly", code="shard_unavailable",
                   headers={"Retry-After": RETRY_AFTER_S}, shard=name)


def valid_id(video_id: str) -> bool:
    return re.fullmatch(VIDEO_ID, video_id) is not None


class ShardUnreachable(Exception):
    def __init__(self, name: str, why: str):
        super().__init__(why)
        self.name, self.why = name, why


class ShardPool:
    """settings: the front's Settings (redis_url, cluster_token, shard_timeout_s)."""

    def __init__(self, settings):
        import redis
        self.settings = settings
        self.r = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)
        self.http: httpx.AsyncClient | None = None
        self._states: tuple[float, dict[str, ShardState]] = (-1e9, {})

    async def open(self) -> None:
        # No cap on connections: each progress stream and upload holds one for minutes, and a
        # cap would make healthy shards look down to everything queued behind them.
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(self.settings.shard_timeout_s, connect=2.0),
                                      limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    # ---------------------------------------------------------------- registry
    async def states(self) -> dict[str, ShardState]:
        """Every registered shard, as the registry says now (cached for half a second)."""
        at, states = self._states
        if time.monotonic() - at > 0.5:
            states = await asyncio.to_thread(shard_states, self.r)
            self._states = (time.monotonic(), states)
        return states

    async def up(self) -> list[ShardState]:
        return [s for s in (await self.states()).values() if s.up]

    async def placement(self, key: str) -> list[str]:
        """The live shards to try for an upload whose placement key (the SHA-256 of its first
        bytes, api/front/upload.py) is `key`, best first: where such bytes went before (their
        KV may be there already), then rendezvous order."""
        live = [s.name for s in await self.up()]
        before = await asyncio.to_thread(self.r.get, placed_key(key))
        order = rendezvous(key, live)
        if before is not None and before.decode() in live:
            order.remove(before.decode())
            order.insert(0, before.decode())
        return order

    async def placed(self, key: str, video_id: str, shard: str, tenant: str) -> None:
        def write():
            pipe = self.r.pipeline()
            pipe.set(placed_key(key), shard)
            pipe.hset(VIDEO_SHARD, video_id, json.dumps({"shard": shard, "tenant": tenant}))
            pipe.execute()
        await asyncio.to_thread(write)

    async def forget(self, video_id: str) -> None:
        await asyncio.to_thread(self.r.hdel, VIDEO_SHARD, video_id)

    async def locate(self, video_id: str, tenant: str) -> ShardState:
        """The up shard holding the tenant's video; 404 when the tenant has no such video, 503
        (naming the shard) when its shard is down."""
        raw = await asyncio.to_thread(self.r.hget, VIDEO_SHARD, video_id)
        if raw is None:
            name = await self._find(video_id, tenant)
        else:
            entry = json.loads(raw)
            if entry["tenant"] != tenant:
                raise Problem(404, f"no video {video_id!r}", code="video_not_found")
            name = entry["shard"]
        state = (await self.states()).get(name)
        if state is None or not state.up:
            raise shard_unavailable(name, "its API is not heartbeating")
        return state

    async def shard_name(self, video_id: str, tenant: str) -> str:
        """The shard a video named in a request lives on, up or not (404 if it is not the
        tenant's): fan-outs report a shard that is down as missing."""
        if not valid_id(video_id):
            raise Problem(404, f"no video {video_id!r}", code="video_not_found")
        try:
            return (await self.locate(video_id, tenant)).name
        except Problem as e:
            if e.status == 503:
                return e.extra["shard"]
            raise

    async def _find(self, video_id: str, tenant: str) -> str:
        """A video the map does not name (uploaded to a shard directly, or the map was lost
        with Redis): the up shard that has it for this tenant is asked, and remembered."""
        replies, missing = await self.fanout("GET", f"/v1/videos/{video_id}", tenant)
        for name, resp in replies.items():
            if resp.status_code == 200:
                await asyncio.to_thread(self.r.hset, VIDEO_SHARD, video_id,
                                        json.dumps({"shard": name, "tenant": tenant}))
                return name
        missing += [n for n, resp in replies.items() if resp.status_code != 404]
        if missing:                         # it may be on a shard that did not answer
            raise shard_unavailable(", ".join(sorted(missing)), "it did not answer whether it holds this video")
        raise Problem(404, f"no video {video_id!r}", code="video_not_found")

    # ---------------------------------------------------------------- HTTP to shards
    def headers(self, tenant: str) -> dict:
        return {TENANT_HEADER: tenant, CLUSTER_HEADER: self.settings.cluster_token}

    async def send(self, shard: ShardState, method: str, path: str, tenant: str, *, stream: bool = False,
                   read_timeout: float | None = -1, **kw) -> httpx.Response:
        """One request to a shard's API; ShardUnreachable when it cannot be reached or times out.
        read_timeout: -1 = VIDEOKV_SHARD_TIMEOUT_S, None = none (event streams)."""
        timeout = httpx.Timeout(self.settings.shard_timeout_s if read_timeout == -1 else read_timeout, connect=2.0)
        headers = {**self.headers(tenant), **kw.pop("headers", {})}
        req = self.http.build_request(method, shard.url + path, headers=headers, timeout=timeout, **kw)
        try:
            return await self.http.send(req, stream=stream)
        except httpx.TransportError as e:
            raise ShardUnreachable(shard.name, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None

    async def fanout(self, method: str, path: str, tenant: str, bodies: dict[str, dict] | None = None,
                     **kw) -> tuple[dict[str, httpx.Response], list[str]]:
        """The same request to every up shard (or, with bodies, to those shards with their own
        JSON body), in parallel: ({shard: response}, [shards down or too slow])."""
        states = await self.states()
        targets = [s for s in states.values() if s.up and (bodies is None or s.name in bodies)]
        missing = sorted(s.name for s in states.values() if not s.up and (bodies is None or s.name in bodies))

        async def one(s: ShardState):
            extra = {"json": bodies[s.name]} if bodies is not None else {}
            return s.name, await self.send(s, method, path, tenant, **extra, **kw)

        replies = {}
        for res in await asyncio.gather(*(one(s) for s in targets), return_exceptions=True):
            if isinstance(res, ShardUnreachable):
                missing.append(res.name)
            elif isinstance(res, BaseException):
                raise res
            else:
                replies[res[0]] = res[1]
        if bodies is not None:                       # shards asked for that are not registered at all
            missing += [n for n in bodies if n not in states]
        return replies, sorted(set(missing))
