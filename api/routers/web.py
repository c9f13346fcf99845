"""The web page (api/web/: one HTML file, its script and its style; no build step): `/` and
`/web/*`. A strict Content-Security-Policy: only this origin's script, style and media."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

WEB = Path(__file__).resolve().parents[1] / "web"
FILES = {"app.js": "text/javascript", "app.css": "text/css"}
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; media-src 'self'; "
                                      "object-src 'none'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def router(svc, models) -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get("/")
    async def page():
        return FileResponse(WEB / "index.html", media_type="text/html", headers=HEADERS)

    @r.get("/web/{name}")
    async def asset(name: str):
        if name not in FILES:
            raise HTTPException(404, f"no file {name!r} in the web page")
        return FileResponse(WEB / name, media_type=FILES[name], headers=HEADERS)

    return r
