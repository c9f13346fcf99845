"""Streaming multipart upload: the request body is parsed as it arrives and the `file` part
is written to disk in blocks (hashing as it goes); never whole in memory. Over the size
limit the upload stops at once (413) and the partial file is removed."""

from __future__ import annotations

import errno
import hashlib
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from videokv.ingest.text.subtitles import MAX_BYTES as SUBTITLE_MAX_BYTES

from .problems import Problem, insufficient_storage

# Small form fields accepted next to the file (the text channel switches), and the
# optional subtitle file part.
FORM_FIELDS = ("ocr", "asr", "subtitles")
SUBTITLE_PART = "subtitles_file"
MAX_SUBTITLE_BYTES = SUBTITLE_MAX_BYTES     # what the parser accepts at all


@dataclass
class Received:
    path: Path
    filename: str
    size: int
    sha256: str
    fields: dict = None                 # FORM_FIELDS given, as strings
    subtitles: Path | None = None       # the uploaded subtitle file, next to path
    subtitles_name: str = ""            # its name as the user sent it (for error messages)

    def discard(self) -> None:
        shutil.rmtree(self.path.parent, ignore_errors=True)
        if self.subtitles is not None:
            self.subtitles.unlink(missing_ok=True)


def safe_filename(name: str | None) -> str:
    name = Path((name or "").replace("\\", "/")).name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:120]
    return name or "upload.bin"


class PartHeaders:
    """The header callbacks of a streaming multipart parse: each part's headers collected
    before its data (`on_headers_finished` -> the subclass's `_hdone`)."""

    def __init__(self):
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._hfield, "on_header_value": self._hvalue,
            "on_header_end": self._hend, "on_headers_finished": self._hdone, "on_part_data": self._data,
            "on_part_end": self._part_end,
        }

    def disposition(self) -> tuple[str, dict]:
        """The current part's form name and its Content-Disposition options."""
        _, opts = parse_options_header(self.headers.get(b"content-disposition", b""))
        return opts.get(b"name", b"").decode("utf-8", "replace"), opts

    def _part_begin(self):
        self.headers, self.header_field, self.header_value = {}, b"", b""

    def _hfield(self, data, start, end):
        self.header_field += data[start:end]

    def _hvalue(self, data, start, end):
        self.header_value += data[start:end]

    def _hend(self):
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field, self.header_value = b"", b""


class _Sink(PartHeaders):
    def __init__(self, tmp_dir: Path, limit: int, field: str = "file"):
        super().__init__()
        self.tmp_dir, self.limit, self.field = tmp_dir, limit, field
        self.fh = None
        self.path: Path | None = None
        self.filename = ""
        self.size = 0
        self.digest = hashlib.sha256()
        self.found = False
        self.writing = False
        self.fields: dict[str, str] = {}
        self.subtitles: Path | None = None
        self.subtitles_name = ""
        self.target = None              # what the current part's data goes to

    def _part_begin(self):
        super()._part_begin()
        self.writing = False

    def _hdone(self):
        name, opts = self.disposition()
        self.target = None
        if name == self.field and not self.found and b"filename" in opts:
            self.found = self.writing = True
            self.target = "file"
            self.filename = safe_filename(opts[b"filename"].decode("utf-8", "replace"))
            self.path = self.tmp_dir / self.filename
            self.fh = open(self.path, "wb")
        elif name == SUBTITLE_PART and b"filename" in opts and self.subtitles is None:
            self.subtitles_name = safe_filename(opts[b"filename"].decode("utf-8", "replace"))
            suffix = Path(self.subtitles_name).suffix.lower()[:8]
            suffix = suffix if suffix in (".srt", ".vtt") else ".txt"   # the parser says what is wrong
            self.subtitles = self.tmp_dir.parent / (self.tmp_dir.name + ".subtitles" + suffix)
            self.target = SUBTITLE_PART      # not "subtitles": that is the switch's form field
            self.sub_fh, self.sub_size = open(self.subtitles, "wb"), 0
        elif name in FORM_FIELDS and b"filename" not in opts:
            self.target = name
            self.fields[name] = ""

    def _data(self, data, start, end):
        if self.target == SUBTITLE_PART:
            self.sub_size += end - start
            if self.sub_size > MAX_SUBTITLE_BYTES:
                raise Problem(413, f"the subtitle file is larger than {MAX_SUBTITLE_BYTES >> 20} MiB",
                              code="too_large")
            self.sub_fh.write(data[start:end])
            return
        if self.target in FORM_FIELDS:
            self.fields[self.target] += data[start:end].decode("utf-8", "replace")
            if len(self.fields[self.target]) > 64:
                raise Problem(422, f"form field {self.target!r} is too long", code="invalid_request")
            return
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
        if self.target == SUBTITLE_PART:
            self.sub_fh.close()
        self.target = None
        if self.writing:
            self.fh.close()
            self.writing = False


def multipart_boundary(request: Request, limit: int) -> bytes:
    """The upload's multipart boundary; 415 when it is not multipart, 413 when its declared
    length is over `limit` bytes (plus 1 MiB for the other parts)."""
    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in opts:
        raise Problem(415, "upload the video as multipart/form-data with a `file` part "
                           "(curl -F file=@video.mp4)", code="unsupported_media_type")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + (1 << 20):
        raise Problem(413, f"the upload ({int(declared) // (1 << 20)} MiB) is larger than the limit of "
                           f"{limit // (1 << 20)} MiB (VIDEOKV_MAX_UPLOAD_MB)", code="too_large")
    return opts[b"boundary"]


async def receive_file(request: Request, uploads: Path, limit: int) -> Received:
    boundary = multipart_boundary(request, limit)
    tmp_dir = uploads / "tmp" / secrets.token_hex(8)
    try:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise insufficient_storage(e) if e.errno in (errno.ENOSPC, errno.EDQUOT) else e from None
    sink = _Sink(tmp_dir, limit)
    parser = MultipartParser(boundary, sink.callbacks())
    try:
        async for block in request.stream():
            parser.write(block)
        parser.finalize()
    except Problem:
        _cleanup(sink, tmp_dir)
        raise
    except OSError as e:          # the server's disk, not the client's body
        _cleanup(sink, tmp_dir)
        raise insufficient_storage(e) if e.errno in (errno.ENOSPC, errno.EDQUOT) else e from None
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
    return Received(sink.path, sink.filename, sink.size, sink.digest.hexdigest(), sink.fields, sink.subtitles,
                    sink.subtitles_name)


def _cleanup(sink: _Sink, tmp_dir: Path) -> None:
    if sink.fh is not None and not sink.fh.closed:
        sink.fh.close()
    if sink.subtitles is not None:
        if not sink.sub_fh.closed:
            sink.sub_fh.close()
        sink.subtitles.unlink(missing_ok=True)
    shutil.rmtree(tmp_dir, ignore_errors=True)
