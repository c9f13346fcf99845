"""Errors as RFC 9457 `application/problem+json`: {type, title, status, detail, ...}."""

from __future__ import annotations

import errno
import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from videokv.errors import VideoKVError

log = logging.getLogger("videokv.api")
MEDIA = "application/problem+json"


def problem(status: int, detail: str, *, code: str | None = None, headers: dict | None = None, **extra) -> JSONResponse:
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body = {"type": f"about:blank#{code}" if code else "about:blank", "title": title, "status": status,
            "detail": detail, **extra}
    if code:
        body["code"] = code
    return JSONResponse(body, status_code=status, media_type=MEDIA, headers=headers)


class Problem(Exception):
    def __init__(self, status: int, detail: str, code: str | None = None, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.status, self.detail, self.code, self.headers, self.extra = status, detail, code, headers, extra


def disk_full(e: BaseException) -> bool:
    """Whether an error (or one it was raised from) is the disk running out: ENOSPC/EDQUOT,
    or LMDB's own report of it."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def insufficient_storage(e: OSError | None = None) -> Problem:
    """507: the server's disk is full (a server condition, never the client's fault)."""
    return Problem(507, "the server has no space left to store this; try again later or ask the operator to "
                        "free disk space", code="insufficient_storage", headers={"Retry-After": "300"})


def _loc(err: dict) -> str:
    return ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"


def install(app: FastAPI, errors=None) -> None:
    """The handlers that turn every error into a problem; errors: a prometheus Counter
    labelled by code (workers/metrics.py) each one is counted in."""

    def reply(status: int, detail: str, **kw) -> JSONResponse:
        if errors is not None:
            errors.labels(kw.get("code") or f"http_{status}").inc()
        return problem(status, detail, **kw)

    @app.exception_handler(Problem)
    async def _problem(request: Request, e: Problem):
        return reply(e.status, e.detail, code=e.code, headers=e.headers, **e.extra)

    @app.exception_handler(VideoKVError)
    async def _vkv(request: Request, e: VideoKVError):
        status = int(getattr(e, "http_status", 400))
        code = e.code
        if status >= 500 and disk_full(e):
            p = insufficient_storage()
            return reply(p.status, p.detail, code=p.code, headers=p.headers)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status >= 500:
            log.exception("server error", exc_info=e)
        return reply(status, str(e), code=code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        errs = [{"loc": _loc(x), "msg": x.get("msg", "")} for x in e.errors()]
        detail = "; ".join(f"{x['loc']}: {x['msg']}" for x in errs) or "invalid request"
        return reply(422, detail, code="invalid_request", errors=errs)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        return reply(e.status_code, str(e.detail), headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        if disk_full(e):
            p = insufficient_storage()
            return reply(p.status, p.detail, code=p.code, headers=p.headers)
        log.exception("unhandled error", exc_info=e)
        return reply(500, f"internal error ({type(e).__name__}); see the server log", code="internal")
