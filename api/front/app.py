"""The front API of a sharded service: the same /v1 API, over the shards' APIs.

    uvicorn --factory videokv.services:front_app        (or: videokv serve --front)

It holds no KV and no model; its home keeps only the API keys. It
checks each caller's key, then:
- an upload is placed on a shard by its first bytes and streamed through to that shard's
  API (api/front/upload.py), which probes, registers and queues it on its own ingest queue;
- a request for one video goes to the shard the placement map names (a 503 naming the shard,
  with Retry-After, when it is down);
- listing and search ask every up shard in parallel, each within VIDEOKV_SHARD_TIMEOUT_S,
  and say which shards are missing;
- a batch job is split by shard; each part is queued on its shard's Celery queue, so a part
  for a shard that is down runs when it comes back (api/front/jobs.py).
"""

# No `from __future__ import annotations`: FastAPI must see the request models made per app
# (`body: SearchRequest` names a local) as classes.

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from redis.exceptions import RedisError
from starlette.background import BackgroundTask

from videokv.api import problems
from videokv.api.auth import KeyRing
from videokv.api.limits import BodyLimit
from videokv.api.problems import Problem
from videokv.api.schemas import request_models
from videokv.query.answers import QueryError
from videokv.query.moments import MAX_MOMENTS, page, page_offset, rank_key, search_scope

from . import jobs
from .pool import HOP_HEADERS, ShardPool, ShardUnreachable, shard_unavailable, valid_id
from .upload import forward_upload


def create_front_app(settings) -> FastAPI:
    if settings.auth == "keys" and not settings.cluster_token:
        raise ValueError("the front API needs VIDEOKV_CLUSTER_TOKEN, the secret its shards' APIs share with it")
    pool = ShardPool(settings)
    keys = KeyRing(settings.home)

    @asynccontextmanager
    async def lifespan(app):
        await pool.open()
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="videokv (front)", version="1", description=__doc__, lifespan=lifespan)
    app.state.pool = pool
    problems.install(app)
    models = request_models(settings.max_question_chars, settings.max_answer_tokens)
    SearchRequest = models.SearchRequest

    async def tenant(request: Request) -> str:
        return "default" if settings.auth == "open" else keys.tenant(request.headers.get("authorization"))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        checks = {}
        try:
            states = await pool.states()
            checks["redis"] = "ok"
        except Exception as e:  # noqa: BLE001
            states = {}
            checks["redis"] = f"error: {type(e).__name__}: {e}"
        up = [s.name for s in states.values() if s.up]
        down = [s.name for s in states.values() if not s.up]
        checks["shards"] = (f"ok ({len(up)} up: {', '.join(up)}" + (f"; down: {', '.join(down)}" if down else "") + ")"
                            if up else "error: no shard is up (start `videokv serve --shard NAME` on a shard host)")
        ok = all(v.startswith("ok") for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks,
                             "shards": [s.view() for s in states.values()]}, status_code=200 if ok else 503)

    @app.get("/v1/shards")
    async def list_shards(t: str = Depends(tenant)):
        return {"shards": [s.view() for s in (await pool.states()).values()]}

    # ---------------------------------------------------------------- videos
    @app.post("/v1/videos", status_code=202)
    async def upload(request: Request, t: str = Depends(tenant)):
        resp, shard, key = await forward_upload(request, pool, t, settings.max_upload_mb << 20)
        try:
            body = resp.json()
        except ValueError:
            raise Problem(502, f"shard {shard!r} answered the upload with something other than JSON "
                               f"(HTTP {resp.status_code})", code="bad_gateway", shard=shard) from None
        if resp.status_code in (200, 202):
            await pool.placed(key, body["id"], shard, t)
        headers = {"Location": body["status_url"]} if "status_url" in body else None
        for h in ("retry-after", "www-authenticate"):
            if h in resp.headers:
                headers = {**(headers or {}), h: resp.headers[h]}
        return JSONResponse(body, status_code=resp.status_code, headers=headers,
                            media_type=resp.headers.get("content-type"))

    @app.get("/v1/videos")
    async def list_videos(t: str = Depends(tenant)):
        replies, missing = await pool.fanout("GET", "/v1/videos", t)
        videos = []
        for name, resp in replies.items():
            if _answered(resp, name, missing):
                videos += resp.json()["videos"]
        return {"videos": sorted(videos, key=lambda v: v["created"]), "missing_shards": sorted(missing)}

    async def one_video(video_id: str, path: str, request: Request, t: str):
        if not valid_id(video_id):
            raise Problem(404, f"no video {video_id!r}", code="video_not_found")
        shard = await pool.locate(video_id, t)
        body = await request.body()
        ctype = {"content-type": request.headers.get("content-type", "application/json")} if body else {}
        try:
            # Progress events may be minutes apart; a question takes up to its timeout on the shard.
            resp = await pool.send(shard, request.method, f"/v1/videos/{video_id}{path}", t, stream=True,
                                   params=request.query_params, content=body or None, headers=ctype,
                                   read_timeout=None if path == "/events" else
                                   settings.question_timeout_s + 30 if path == "/query" else
                                   max(30.0, settings.shard_timeout_s))
        except ShardUnreachable as e:
            raise shard_unavailable(e.name, e.why) from None
        if request.method == "DELETE" and resp.status_code == 204:
            await pool.forget(video_id)
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}
        return StreamingResponse(resp.aiter_raw(), status_code=resp.status_code, headers=headers,
                                 background=BackgroundTask(resp.aclose))

    @app.api_route("/v1/videos/{video_id}", methods=["GET", "DELETE"])
    async def video(video_id: str, request: Request, t: str = Depends(tenant)):
        return await one_video(video_id, "", request, t)

    @app.api_route("/v1/videos/{video_id}/{rest}", methods=["GET", "POST"])
    async def video_part(video_id: str, rest: str, request: Request, t: str = Depends(tenant)):
        if rest not in ("events", "transcript", "frame", "query"):
            raise Problem(404, f"no such resource: /v1/videos/{{id}}/{rest}", code="not_found")
        return await one_video(video_id, "/" + rest, request, t)

    # ---------------------------------------------------------------- search
    @app.post("/v1/search")
    async def search(body: SearchRequest, t: str = Depends(tenant)):
        # Each shard ranks its own videos with the same oracles: the merged lists are by score.
        # A page of moments is the front's own: every shard is asked for all moments up to the
        # page's end and one more (a shard holding all of the next page's moments must say
        # so), and the front's token names its offset into the merged list.
        scope = search_scope(body.query, t, body.video_ids, body.min_score)
        try:
            offset = page_offset(body.page_token, scope)
        except QueryError as e:
            raise Problem(400, str(e), code=e.code) from None
        req = body.model_dump(exclude_none=True, exclude={"page_token"})
        req["limit"] = min(MAX_MOMENTS, offset + body.limit + 1)     # one more: is there a next page?
        bodies = None
        if body.video_ids is not None:
            bodies = {}
            for vid in dict.fromkeys(body.video_ids):
                name = await pool.shard_name(vid, t)
                bodies.setdefault(name, {**req, "video_ids": []})["video_ids"].append(vid)
        replies, missing = await pool.fanout("POST", "/v1/search", t, bodies, **({} if bodies is not None else {"json": req}))
        hits, moments = [], []
        for name, resp in replies.items():
            if _answered(resp, name, missing):
                hits += resp.json()["results"]
                moments += resp.json().get("moments", [])
        hits.sort(key=lambda h: -h["score"])
        moments.sort(key=rank_key)
        got, token = page(moments, offset, body.limit, scope)
        return {"query": body.query, "results": hits[:body.top_k], "moments": got, "next_page_token": token,
                "missing_shards": sorted(missing)}

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, e: RedisError):
        return problems.problem(503, f"Redis is unavailable ({type(e).__name__}); try again", code="queue_unavailable",
                                headers={"Retry-After": "5"})

    jobs.install(app, pool, models, settings, tenant)
    app.add_middleware(BodyLimit, max_bytes=settings.max_json_kb << 10)
    return app


def _answered(resp, name: str, missing: list[str]) -> bool:
    """A shard's reply to a fan-out: True with results; a client error (a bad request is bad
    on every shard) is the caller's problem; anything else counts the shard as missing."""
    if resp.status_code == 200:
        return True
    if 400 <= resp.status_code < 500 and resp.status_code not in (401, 403, 404):
        try:
            p = resp.json()
        except ValueError:
            p = {}
        raise Problem(resp.status_code, p.get("detail", f"shard {name!r} refused the request"),
                      code=p.get("code"))
    missing.append(name)
    return False
