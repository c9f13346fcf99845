"""Streaming multipart upload: the request body is parsed as it arrives and the `file` part
is written to disk in blocks (hashing as it goes); never whole in memory. Over the size
limit the upload stops at once (413) and the partial file is removed."""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from .problems import Problem


@dataclass
class Received:
    path: Path
    filename: str
    size: int
    sha256: str

    def discard(self) -> None:
        shutil.rmtree(self.path.parent, ignore_errors=True)


def safe_filename(name: str | None) -> str:
    name = Path((name or "").replace("\\", "/")).name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:120]
    return name or "upload.bin"


class _Sink:
    def __init__(self, tmp_dir: Path, limit: int, field: str = "file"):
        self.tmp_dir, self.limit, self.field = tmp_dir, limit, field
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.fh = None
        self.path: Path | None = None
        self.filename = ""
        self.size = 0
        self.digest = hashlib.sha256()
        self.found = False
        self.writing = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._hfield, "on_header_value": self._hvalue,
            "on_header_end": self._hend, "on_headers_finished": self._hdone, "on_part_data": self._data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self):
        self.headers, self.header_field, self.header_value, self.writing = {}, b"", b"", False

    def _hfield(self, data, start, end):
        self.header_field += data[start:end]

    def _hvalue(self, data, start, end):
        self.header_value += data[start:end]

    def _hend(self):
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field, self.header_value = b"", b""

    def _hdone(self):
        _, opts = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if name == self.field and not self.found and b"filename" in opts:
            self.found = self.writing = True
            self.filename = safe_filename(opts[b"filename"].decode("utf-8", "replace"))
            self.path = self.tmp_dir / self.filename
            self.fh = open(self.path, "wb")

    def _data(self, data, start, end):
        if not self.writing:
            return
        n = end - start
        self.size += n
        if self.size > self.limit:
            raise Problem(413, f"the upload is larger than the limit of {self.limit // (1 << 20)} MiB "
                               "(VIDEOKV_MAX_UPLOAD_MB)", code="too_large")
        chunk = data[start:end]
        self.fh.write(chunk)
        self.digest.update(chunk)

    def _part_end(self):
        if self.writing:
            self.fh.close()
            self.writing = False


async def receive_file(request: Request, uploads: Path, limit: int) -> Received:
    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in opts:
        raise Problem(415, "upload the video as multipart/form-data with a `file` part "
                           "(curl -F file=@video.mp4)", code="unsupported_media_type")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + (1 << 20):
        raise Problem(413, f"the upload ({int(declared) // (1 << 20)} MiB) is larger than the limit of "
                           f"{limit // (1 << 20)} MiB (VIDEOKV_MAX_UPLOAD_MB)", code="too_large")
    tmp_dir = uploads / "tmp" / secrets.token_hex(8)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    sink = _Sink(tmp_dir, limit)
    parser = MultipartParser(opts[b"boundary"], sink.callbacks())
    try:
        async for block in request.stream():
            parser.write(block)
        parser.finalize()
    except Problem:
        _cleanup(sink, tmp_dir)
        raise
    except Exception as e:
        _cleanup(sink, tmp_dir)
        raise Problem(400, f"malformed multipart body: {e}", code="bad_multipart") from None
    if sink.fh is not None and not sink.fh.closed:
        _cleanup(sink, tmp_dir)
        raise Problem(400, "the multipart body ended in the middle of the file part", code="bad_multipart")
    if not sink.found:
        _cleanup(sink, tmp_dir)
        raise Problem(422, "no `file` part with a filename in the upload (curl -F file=@video.mp4)",
                      code="no_file")
    return Received(sink.path, sink.filename, sink.size, sink.digest.hexdigest())


def _cleanup(sink: _Sink, tmp_dir: Path) -> None:
    if sink.fh is not None and not sink.fh.closed:
        sink.fh.close()
    shutil.rmtree(tmp_dir, ignore_errors=True)
