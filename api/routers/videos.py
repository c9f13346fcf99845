"""/v1/videos: upload, list, view, delete, ingest progress (SSE), transcript (media: media.py)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from videokv.kvstore import Status, VideoNotFoundError

from ..problems import Problem
from ..schemas import Transcript, UploadedVideo, Video, VideoList
from ..service import TERMINAL, sse, video_view
from ..upload import receive_file
from .deps import problems, tenant_of

_SWITCH = {"type": "string", "enum": ["true", "false"], "description": "a text channel on or off for this upload"}
# The upload is read by a streaming multipart parser (api/upload.py), not by FastAPI: its
# body is declared here so /openapi.json documents it.
UPLOAD_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "the video"},
                   "ocr": _SWITCH, "asr": _SWITCH, "subtitles": _SWITCH,
                   "subtitles_file": {"type": "string", "format": "binary", "description": "a .srt or .vtt file"}}}}}}


def router(svc, models) -> APIRouter:
    r = APIRouter(prefix="/v1/videos", tags=["videos"], responses=problems(401))
    tenant = tenant_of(svc)
    settings = svc.settings

    @r.post("", status_code=202, response_model=UploadedVideo,
            responses={200: {"model": UploadedVideo, "description": "already uploaded (same id)"},
                       **problems(400, 413, 415, 422, 503, 507)},
            openapi_extra={"requestBody": UPLOAD_BODY},
            description="multipart/form-data with a `file` part. 202: queued for ingest; 200: the same "
                        "file was already uploaded by this tenant with this model config (same id).")
    async def upload(request: Request, t: str = Depends(tenant)):
        up = await receive_file(request, svc.uploads, settings.max_upload_mb << 20)
        rec, dedup = await run_in_threadpool(svc.register, up, t)
        body = {**video_view(rec, settings.shard), "deduplicated": dedup}
        return JSONResponse(body, status_code=200 if dedup else 202, headers={"Location": body["status_url"]})

    @r.get("", response_model=VideoList)
    def list_videos(t: str = Depends(tenant)):
        recs = sorted(svc.rt.store.list_videos(t), key=lambda rec: rec.created)
        return {"videos": [video_view(rec, settings.shard) for rec in recs]}

    @r.get("/{video_id}", response_model=Video, responses=problems(404))
    def get_video(video_id: str, t: str = Depends(tenant)):
        return video_view(svc.owned(video_id, t), settings.shard)

    @r.delete("/{video_id}", status_code=204, response_class=Response, responses=problems(404))
    def delete_video(video_id: str, t: str = Depends(tenant)):
        svc.delete(svc.owned(video_id, t))
        return Response(status_code=204)

    @r.get("/{video_id}/events", response_class=StreamingResponse,
           responses={200: {"content": {"text/event-stream": {}}}, **problems(404)},
           description="server-sent events: `progress` on every change, ends with `ready` or `failed`")
    async def video_events(video_id: str, request: Request, t: str = Depends(tenant),
                           timeout: float = Query(3600, gt=0, le=86400)):
        svc.owned(video_id, t)

        async def gen():
            last, deadline = None, time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    rec = svc.rt.store.get_video(video_id)
                except VideoNotFoundError:
                    yield sse("deleted", {"id": video_id})
                    return
                view = video_view(rec, settings.shard)
                key = (view["status"], view["chunks_done"], view["chunks_total"])
                if key != last:
                    last = key
                    yield sse("progress", view)
                if rec.status in TERMINAL:
                    yield sse(rec.status.value.lower(), view)
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.25)
            yield sse("timeout", {"id": video_id})

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @r.get("/{video_id}/transcript", response_model=Transcript, responses=problems(404, 409),
           description="the video's time-aligned text: on-screen text (OCR), speech and subtitles, "
                       "each segment with its source, time span and chunk; `channels` says which ran")
    def transcript(video_id: str, t: str = Depends(tenant)):
        from videokv.ingest.text.align import transcript_view
        rec = svc.owned(video_id, t)
        got = svc.rt.store.get_transcript(video_id)
        if got is None and rec.status is not Status.READY:
            raise Problem(409, f"video {video_id} is {rec.status.value}: its text is extracted during ingest",
                          code="video_not_ready")
        return transcript_view(rec, got)

    return r

