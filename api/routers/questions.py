"""Questions: one video's question (POST /v1/videos/{id}/query, streamed or not) and search
across a tenant's videos (POST /v1/search)."""

# No `from __future__ import annotations`: FastAPI must see the request models made per app
# (`body: QueryRequest` names a local) as classes, not strings.

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from videokv.kvstore import Status

from ..problems import Problem
from ..schemas import Answer, SearchResults
from ..service import sse
from .deps import problems, tenant_of


def router(svc, models) -> APIRouter:
    r = APIRouter(tags=["query"], responses=problems(400, 401, 413, 422))
    tenant = tenant_of(svc)
    QueryRequest, SearchRequest = models.QueryRequest, models.SearchRequest

    @r.post("/v1/videos/{video_id}/query", response_model=Answer,
            responses={200: {"content": {"text/event-stream": {}}}, **problems(404, 409, 503)},
            description="Answer a question from the stored KV cache (no video prefill). "
                        "`stream: true` -> text/event-stream of `token` events, then `answer`.")
    async def query(video_id: str, body: QueryRequest, t: str = Depends(tenant)):
        svc.check_question(body.question)
        rec = svc.owned(video_id, t)
        if rec.status is not Status.READY:
            raise Problem(409, f"video {video_id} is {rec.status.value}"
                               + (f" ({rec.reason})" if rec.reason else "") + ": ask again once it is READY",
                          code="video_not_ready")
        if not body.stream:
            return await svc.ask(video_id, body)
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        # Tokens arrive on the query client's reader thread; the end comes after the last of them.
        answer = asyncio.ensure_future(svc.ask(video_id, body, on_token=lambda p: loop.call_soon_threadsafe(
            q.put_nowait, ("token", p))))
        answer.add_done_callback(lambda _f: q.put_nowait(("end", None)))
        head = await q.get()        # refused before any token (404, 503, ...): a problem, not a stream
        if head[0] == "end" and answer.exception() is not None:
            raise answer.exception()

        async def gen():
            kind, text = head
            while kind == "token":
                yield sse("token", {"text": text})
                kind, text = await q.get()
            try:
                yield sse("answer", answer.result())
            except Problem as e:            # headers are sent: the failure is an event
                yield sse("error", {"status": e.status, "code": e.code, "detail": e.detail})

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @r.post("/v1/search", response_model=SearchResults, responses=problems(404),
            description="The query's moments (frame-precise spans: visual, ocr, speech, subtitle; a video without "
                        "per-frame vectors gives whole chunks, source 'chunk') across the tenant's videos or "
                        "`video_ids`, best first, a page of `limit` at a time (`page_token`); and its best chunks.")
    async def search(body: SearchRequest, t: str = Depends(tenant)):
        svc.check_question(body.query, "query")
        recs = {v: svc.owned(v, t) for v in body.video_ids} if body.video_ids is not None else {}
        # The query workers embed the query on their search thread, never behind decoding.
        got = await svc.search(body, t, list(recs) if body.video_ids is not None else None)
        shard = svc.settings.shard or None

        def owned(vid: str):
            rec = recs.get(vid) or recs.setdefault(vid, svc.rt.store.get_video(vid))
            return rec if rec.tenant == t else None     # the store scopes by tenant already; never leak

        out, moments = [], []
        for h in got["results"]:
            rec = owned(h["video_id"])
            if rec is None:
                continue
            span = rec.plan[h["chunk"]] if 0 <= h["chunk"] < len(rec.plan) else None
            out.append({"video_id": rec.video_id, "filename": rec.filename, "chunk": h["chunk"],
                        "t_start": span.t_start if span else None, "t_end": span.t_end if span else None,
                        "score": h["score"], "shard": shard})
        for m in got["moments"]:
            rec = owned(m["video_id"])
            if rec is not None:
                mid = (m["start"] + m["end"]) / 2
                moments.append({**m, "filename": rec.filename, "shard": shard,
                                "thumbnail_url": f"/v1/videos/{rec.video_id}/frame?t={mid:.2f}"})
        return {"query": body.query, "moments": moments, "next_page_token": got.get("next_page_token"),
                "results": out}

    return r
