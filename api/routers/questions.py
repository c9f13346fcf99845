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
            return await svc.submit_question(svc.ask, video_id, body)
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def work():
            try:
                d = svc.ask(video_id, body, on_token=lambda p: loop.call_soon_threadsafe(q.put_nowait, ("token", p)))
                loop.call_soon_threadsafe(q.put_nowait, ("answer", d))
            except Exception as e:  # reported in-stream: headers are already sent
                loop.call_soon_threadsafe(q.put_nowait, ("error", {"detail": str(e), "type": type(e).__name__}))

        fut = svc.submit_question(work)        # admitted (or 503) before the stream starts

        async def gen():
            while True:
                kind, data = await q.get()
                if kind == "token":
                    yield sse("token", {"text": data})
                else:
                    yield sse(kind, data)
                    break
            await fut

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @r.post("/v1/search", response_model=SearchResults, responses=problems(404))
    def search(body: SearchRequest, t: str = Depends(tenant)):
        svc.check_question(body.query, "query")
        recs = {v: svc.owned(v, t) for v in body.video_ids} if body.video_ids is not None else {}
        # Not on the question thread: embedding a query never waits behind decoding.
        hits = svc.rt.queries.search(body.query, body.top_k, tenant=t,
                                     video_ids=list(recs) if body.video_ids is not None else None)
        out = []
        for h in hits:
            rec = recs.get(h.video_id) or recs.setdefault(h.video_id, svc.rt.store.get_video(h.video_id))
            if rec.tenant != t:     # the store scopes by tenant already; never leak
                continue
            span = rec.plan[h.chunk] if 0 <= h.chunk < len(rec.plan) else None
            out.append({"video_id": h.video_id, "filename": rec.filename, "chunk": h.chunk,
                        "t_start": span.t_start if span else None, "t_end": span.t_end if span else None,
                        "score": h.score})
        return {"query": body.query, "results": out}

    return r
