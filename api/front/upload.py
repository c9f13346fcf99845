"""An upload through the front API, streamed through to its shard: never staged on the
front's disk, never whole in its memory.

The front reads the request body until it has seen the first PLACEMENT_BYTES of the `file`
part (or the whole file, if smaller), places the upload by rendezvous hashing of the SHA-256
of those bytes, then sends the shard's API the body exactly as it came (the blocks it
buffered, then the rest as it arrives). The shard parses, hashes, probes, deduplicates and
queues it as a single host does.

Why a prefix and not the whole file's hash: placement only needs the same bytes to land on
the same shard, which a prefix gives; waiting for the whole hash means staging the whole
file first (measured: 2.9x the time of a direct upload for 1 GB on loopback). Different
files that share their first 4 MiB (a recording re-uploaded longer) simply go to the same
shard.
"""

from __future__ import annotations

import hashlib

from python_multipart.multipart import MultipartParser
from starlette.requests import ClientDisconnect, Request

from videokv.api.problems import Problem
from videokv.api.upload import MAX_SUBTITLE_BYTES, PartHeaders, multipart_boundary

from .pool import ShardPool, ShardUnreachable, shard_unavailable

PLACEMENT_BYTES = 4 << 20
UPLOAD_REPLY_S = 300.0          # the shard probes and registers after the last byte
# The most of a body held before its file part's first PLACEMENT_BYTES: the largest subtitle
# file the API accepts, the placement bytes and 1 MiB of form fields and multipart framing.
HEAD_LIMIT = MAX_SUBTITLE_BYTES + PLACEMENT_BYTES + (1 << 20)


class PrefixPeek(PartHeaders):
    """Fed the raw multipart body; collects the first `need` bytes of the `file` part."""

    def __init__(self, boundary: bytes, need: int = PLACEMENT_BYTES):
        super().__init__()
        self.need, self.prefix = need, bytearray()
        self.found = self.done = False
        self._in_file = False
        self.parser = MultipartParser(boundary, self.callbacks())

    def write(self, block: bytes) -> None:
        if not self.done:
            self.parser.write(block)

    def _hdone(self):
        name, opts = self.disposition()
        self._in_file = name == "file" and b"filename" in opts and not self.found
        self.found |= self._in_file

    def _data(self, data, start, end):
        if self._in_file:
            self.prefix += data[start:min(end, start + self.need - len(self.prefix))]
            self.done = len(self.prefix) >= self.need

    def _part_end(self):
        if self._in_file:
            self._in_file, self.done = False, True


async def forward_upload(request: Request, pool: ShardPool, tenant: str, limit: int):
    """(the shard's response, its name, the placement key) for this upload request."""
    peek = PrefixPeek(multipart_boundary(request, limit))
    declared = request.headers.get("content-length")
    body = request.stream()
    head: list[bytes] = []
    held = 0
    try:
        async for block in body:
            head.append(block)
            held += len(block)
            peek.write(block)
            if peek.done:
                break
            if held > HEAD_LIMIT:           # never hold more than this in memory
                raise Problem(422, f"the `file` part must start within the first {HEAD_LIMIT >> 20} MiB of the "
                                   "upload (send the form fields and the subtitles file first, or after it)",
                              code="no_file")
    except ClientDisconnect:
        raise Problem(400, "the client went away during the upload", code="bad_multipart") from None
    except Problem:
        raise
    except Exception as e:                      # a malformed body: the shard's parser would say the same
        raise Problem(400, f"malformed multipart body: {e}", code="bad_multipart") from None
    if not peek.found:
        raise Problem(422, "no `file` part with a filename in the upload (curl -F file=@video.mp4)", code="no_file")
    key = hashlib.sha256(bytes(peek.prefix)).hexdigest()
    order = await pool.placement(key)
    if not order:
        raise Problem(503, "no shard is up to store this upload; try again shortly", code="no_shard",
                      headers={"Retry-After": "10"})
    sent = {"bytes": 0}

    async def stream():
        for block in head:
            sent["bytes"] += len(block)
            yield block
        async for block in body:
            sent["bytes"] += len(block)
            if sent["bytes"] > limit + (1 << 20):
                raise Problem(413, f"the upload is larger than the limit of {limit // (1 << 20)} MiB "
                                   "(VIDEOKV_MAX_UPLOAD_MB)", code="too_large")
            yield block

    headers = {"content-type": request.headers["content-type"]}
    if declared and declared.isdigit():
        headers["content-length"] = declared
    states = await pool.states()
    for name in order:
        try:
            resp = await pool.send(states[name], "POST", "/v1/videos", tenant, content=stream(), headers=headers,
                                   read_timeout=UPLOAD_REPLY_S)
            await resp.aread()
            return resp, name, key
        except ShardUnreachable as e:
            if sent["bytes"]:                   # part of the body went: it cannot be sent again
                raise shard_unavailable(e.name, e.why) from None
        except ClientDisconnect:
            raise Problem(400, "the client went away during the upload", code="bad_multipart") from None
    raise shard_unavailable(order[-1], "it could not be reached")
