"""A limit on request bodies other than uploads: a JSON body is read only up to
VIDEOKV_MAX_JSON_KB (a 300 MB body used to be read whole, +800 MB of API memory, before its
422). Multipart uploads pass through: their streaming reader has its own limits."""

from __future__ import annotations

import json


class BodyLimit:
    """ASGI middleware: bodies that are not multipart are buffered up to `max_bytes`; one
    that declares or sends more gets a 413 problem and is not read further."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if headers.get(b"content-type", b"").startswith(b"multipart/"):
            return await self.app(scope, receive, send)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._too_large(send)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        kb = self.max_bytes >> 10
        body = json.dumps({"type": "about:blank#payload_too_large", "title": "Content Too Large", "status": 413,
                           "detail": f"the request body is over {kb} KiB (VIDEOKV_MAX_JSON_KB)",
                           "code": "payload_too_large"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/problem+json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
