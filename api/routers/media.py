"""A video's media: its original file (HTTP Range: the player seeks without downloading it
whole), a frame as JPEG, and signed links to both for the web page (api/media.py). Each takes
the caller's key, or a signed link's `exp` and `sig`."""

from __future__ import annotations

import io
import mimetypes
import re
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel

from videokv.ingest.video import rotation_turns
from videokv.kvstore import VideoNotFoundError

from ..media import MediaSigner
from ..problems import Problem
from ..schemas import VIDEO_ID
from .deps import problems


class MediaLinks(BaseModel):
    file_url: str
    frame_url: str
    expires_at: int


def router(svc, models) -> APIRouter:
    r = APIRouter(prefix="/v1/videos", tags=["videos"], responses=problems(401, 403, 404))
    signer = MediaSigner(svc.settings.home)

    def viewed(video_id: str, request: Request, exp: int | None, sig: str | None):
        """The video, for its owner's key or a valid signed link (403 otherwise)."""
        if sig is None or exp is None or request.headers.get("authorization"):
            return svc.owned(video_id, svc.tenant(request))
        try:
            rec = svc.rt.store.get_video(video_id) if re.fullmatch(VIDEO_ID, video_id) else None
        except VideoNotFoundError:
            rec = None
        if rec is None:
            raise Problem(404, f"no video {video_id!r}", code="video_not_found")
        signer.check(video_id, rec.tenant, exp, sig)
        return rec

    def original(rec) -> Path:
        path = (rec.extra or {}).get("path")
        if not path or not Path(path).exists():
            raise Problem(404, f"video {rec.video_id} has no stored file", code="original_missing")
        return Path(path)

    @r.get("/{video_id}/media", response_model=MediaLinks,
           description="Signed links (valid 6 hours) to the original file and to frames (`&t=SECONDS`), for "
                       "elements that cannot send a key (<video>, <img>).")
    def media(video_id: str, request: Request):
        rec = svc.owned(video_id, svc.tenant(request))
        q, exp = signer.query(rec.video_id, rec.tenant)
        base = f"/v1/videos/{rec.video_id}"
        return {"file_url": f"{base}/file?{q}", "frame_url": f"{base}/frame?{q}", "expires_at": exp}

    @r.get("/{video_id}/file", response_class=FileResponse,
           responses={200: {"content": {"video/*": {}}}, 206: {"description": "the range asked for"}},
           description="The uploaded file as it was sent (Range requests: 206).")
    def file(video_id: str, request: Request, exp: int | None = Query(None), sig: str | None = Query(None)):
        rec = viewed(video_id, request, exp, sig)
        path = original(rec)
        kind = mimetypes.guess_type(rec.filename or path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=kind, headers={"Cache-Control": "private, max-age=3600"})

    @r.get("/{video_id}/frame", response_class=Response,
           responses={200: {"content": {"image/jpeg": {}}}, **problems(422)})
    def frame(video_id: str, request: Request, t: float = Query(..., ge=0, le=1e7, description="seconds"),
              max_side: int = Query(640, ge=16, le=4096), exp: int | None = Query(None),
              sig: str | None = Query(None)):
        rec = viewed(video_id, request, exp, sig)
        path = original(rec)
        if rec.duration and t > rec.duration:
            raise Problem(422, f"t={t} is past the end of the video ({rec.duration:.2f} s)", code="invalid_request")
        return Response(jpeg_at(str(path), t, max_side), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    return r


def jpeg_at(path: str, t: float, max_side: int) -> bytes:
    """The frame shown at `t` seconds, as JPEG (evidence preview)."""
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        tb = s.time_base
        start = s.start_time or 0
        c.seek(int(t / tb) + start, stream=s, backward=True, any_frame=False)
        chosen = None
        for f in c.decode(s):
            if chosen is None or f.pts is None or float((f.pts - start) * tb) <= t + 1e-6:
                chosen = f
            else:
                break
        if chosen is None:
            raise Problem(422, f"no frame at t={t}", code="no_frame")
        img = chosen.to_image()
        turns = rotation_turns(chosen)
        if turns:                                   # as the phone that filmed it shows it
            img = img.rotate(90 * turns, expand=True)
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()
