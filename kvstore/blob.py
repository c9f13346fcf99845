"""The KV blob format: a 40-byte versioned header, the token-kind mask, the K,V bytes.

Layout (little-endian):

    offset  size  field
    0       4     magic b"VKV1"
    4       2     format version: 1 (stored as is), 2 (a storage codec, codecs.py)
    6       1     dtype code: 1 float32, 2 float16, 3 bfloat16 (what a read returns)
    7       1     checksum algorithm: 1 crc32 (zlib), 2 xxh3-64 (xxhash; the default)
    8       4     layers
    12      4     kv_heads
    16      4     tokens
    20      4     head_dim
    24      4     data_offset: where the tensor bytes start (a multiple of 64)
    28      4     version 1: reserved (0); version 2: codec code (bits 0-7), its key group
                  (bits 8-19) and value group (bits 20-31)
    32      8     checksum of every other byte of the blob (bytes 0..31, then 40..end)
    40      T     kinds: uint8 [tokens], a TokenKind per token
    ...           zero padding up to data_offset
    data_offset   version 1: tensor bytes, shape [layers, 2, kv_heads, tokens, head_dim]:
                  layer-major, and within a layer its K then its V. So one layer's K,V
                  are contiguous (a pager can stream layer by layer) and `keys`/`values`
                  are strided views `kv[:, 0]`, `kv[:, 1]`.
                  version 2: the codec's payload tensors (Codec.parts), each starting at a
                  multiple of 64; a read dequantizes the token rows it needs (`take`).

Why xxh3: it checksums at memory speed (~30 GB/s here, crc32 ~5 GB/s), so verifying
every read costs little next to the one copy out of the map. Without the `xxhash`
package, blobs are written with crc32 and xxh3 blobs fail with a clear error.

Why data_offset is 64-aligned: LMDB stores large values on overflow pages that start
16 bytes into a page, so the tensor data lands 16-byte aligned in the memory map and
torch can use it in place. Smaller values may land unaligned; `decode` then copies
(`BlobView.zero_copy` is False) instead of handing torch a misaligned pointer.
"""

from __future__ import annotations

import functools
import math
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .codecs import BY_CODE, Codec, Rows, row_count, take_rows
from .errors import CorruptBlobError, KVStoreError

MAGIC = b"VKV1"
VERSION = 1             # stored as is
CODEC_VERSION = 2       # a storage codec
HEADER = struct.Struct("<4sHBBIIIIIIQ")
HEADER_SIZE = HEADER.size  # 40
_CSUM_AT = 32
ALIGN = 64

CRC32, XXH3 = 1, 2
try:
    import xxhash
    DEFAULT_CHECKSUM = XXH3
except ImportError:  # optional: fall back to zlib's crc32 (slower reads)
    xxhash = None
    DEFAULT_CHECKSUM = CRC32

DTYPE_CODES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}

# torch warns (once per process) that tensors over a read-only buffer are writable in
# principle. Consume that one warning here, silently: our views are read-only by contract.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.frombuffer(b"\0" * 4, dtype=torch.uint8)


@dataclass(frozen=True)
class BlobHeader:
    dtype: torch.dtype
    layers: int
    kv_heads: int
    tokens: int
    head_dim: int
    data_offset: int
    checksum_algo: int = DEFAULT_CHECKSUM
    codec: Codec | None = None          # None: stored as is (format 1)

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """[layers, 2, kv_heads, tokens, head_dim] of the stored tensor."""
        return (self.layers, 2, self.kv_heads, self.tokens, self.head_dim)

    @property
    def data_nbytes(self) -> int:
        """Bytes of the stored K,V (a codec's payload with its alignment padding)."""
        if self.codec is None:
            return self.layers * 2 * self.kv_heads * self.tokens * self.head_dim * self.dtype.itemsize
        return _payload_layout(self.codec, self.shape)[1]

    @property
    def kv_nbytes(self) -> int:
        """Bytes of the K,V as a read returns them (the model's dtype)."""
        return self.layers * 2 * self.kv_heads * self.tokens * self.head_dim * self.dtype.itemsize

    @property
    def total_nbytes(self) -> int:
        return self.data_offset + self.data_nbytes


@dataclass
class BlobView:
    """A decoded blob. In a read session the tensors are views of LMDB's memory map.

    kv: [layers, 2, kv_heads, tokens, head_dim] in the model's dtype (a codec blob's is
    dequantized when asked for: prefer `take`/`take_into` for some rows);
    keys/values: [layers, kv_heads, tokens, head_dim]; kinds: uint8 [tokens].
    zero_copy: True when the stored bytes alias the buffer they were decoded from.
    Views are read-only: writing into them is undefined (LMDB maps the file read-only,
    a write crashes the process). Copy (`load_into`, `take`) to keep or modify.
    """

    header: BlobHeader
    raw: torch.Tensor | None            # the stored tensor (format 1), else None
    kinds: torch.Tensor
    zero_copy: bool
    parts: Sequence | None = None       # a codec's payload tensors (format 2): a Payload or a list

    @property
    def kv(self) -> torch.Tensor:
        return self.raw if self.header.codec is None else self.take()

    @property
    def keys(self) -> torch.Tensor:
        """(A codec blob dequantizes on every `kv`, `keys` or `values`: take `kv` once.)"""
        return self.kv[:, 0]

    @property
    def values(self) -> torch.Tensor:
        return self.kv[:, 1]

    @property
    def nbytes(self) -> int:
        """Bytes stored (what a read costs in I/O)."""
        return self.header.data_nbytes

    def take(self, rows: Rows = None) -> torch.Tensor:
        """Token `rows` (codecs.Rows, T' of them) as a new tensor [layers, 2, kv_heads, T', head_dim]."""
        h = self.header
        n = row_count(rows, h.tokens)
        if h.codec is None:
            part = take_rows(self.raw, 3, rows)
            return part if isinstance(rows, torch.Tensor) else part.clone()      # gathered: already a copy
        return self.take_into(torch.empty(h.layers, 2, h.kv_heads, n, h.head_dim, dtype=h.dtype), rows)

    def take_into(self, out: torch.Tensor, rows: Rows = None) -> torch.Tensor:
        """Token `rows` written into out [layers, 2, kv_heads, T', head_dim] (a slice of a
        hot set or a pinned buffer): one pass, dequantizing on the way for a codec blob."""
        h = self.header
        if h.codec is None:
            return out.copy_(take_rows(self.raw, 3, rows))
        return h.codec.decode_into(self.parts, out, rows)

    def load_into(self, out: torch.Tensor) -> torch.Tensor:
        """Copy the K,V into `out` ([layers, 2, kv_heads, tokens, head_dim], e.g. a pinned
        host buffer or a slice of one): the one copy out of the memory map."""
        if tuple(out.shape) != self.header.shape:
            raise ValueError(f"out has shape {tuple(out.shape)}, blob is {self.header.shape}")
        return self.take_into(out)


@functools.lru_cache(maxsize=4096)
def _payload_layout(codec: Codec, shape: tuple) -> tuple[tuple[tuple[torch.dtype, tuple, int], ...], int]:
    """((dtype, shape, offset from data_offset), ...), total bytes) of a codec's payload (asked
    for several times per blob read: cached per codec and shape)."""
    out, at = [], 0
    for dtype, sh in codec.parts(shape):
        n = dtype.itemsize
        for d in sh:
            n *= d
        out.append((dtype, sh, at))
        at += -(-n // ALIGN) * ALIGN
    return tuple(out), at


def encoded_size(layers: int, kv_heads: int, tokens: int, head_dim: int, dtype: torch.dtype,
                 codec: Codec | None = None) -> int:
    if codec is not None:
        return _data_offset(tokens) + _payload_layout(codec, (layers, 2, kv_heads, tokens, head_dim))[1]
    return _data_offset(tokens) + layers * 2 * kv_heads * tokens * head_dim * dtype.itemsize


def _codec_field(codec: Codec) -> int:
    if not (0 <= codec.key_group < 4096 and 0 <= codec.value_group < 4096):
        raise ValueError(f"codec groups must be below 4096 (key {codec.key_group}, value {codec.value_group})")
    return codec.code | codec.key_group << 8 | codec.value_group << 20


def _data_offset(tokens: int) -> int:
    return -(-(HEADER_SIZE + tokens) // ALIGN) * ALIGN


def encode(keys: torch.Tensor, values: torch.Tensor, kinds: torch.Tensor, checksum: int = DEFAULT_CHECKSUM,
           codec: Codec | None = None) -> bytearray:
    """Serialise keys/values [layers, kv_heads, tokens, head_dim] and kinds [tokens], stored as
    they are (codec None: format 1) or through a storage codec (format 2)."""
    if keys.dtype not in DTYPE_CODES:
        raise ValueError(f"unsupported KV dtype {keys.dtype}; supported: {list(DTYPE_CODES)}")
    if keys.shape != values.shape or keys.dim() != 4 or values.dtype != keys.dtype:
        raise ValueError(f"keys {tuple(keys.shape)}/{keys.dtype} and values {tuple(values.shape)}/"
                         f"{values.dtype} must match and be [layers, kv_heads, tokens, head_dim]")
    L, H, T, D = keys.shape
    if tuple(kinds.shape) != (T,):
        raise ValueError(f"kinds has shape {tuple(kinds.shape)}, expected ({T},)")
    off = _data_offset(T)
    buf = bytearray(encoded_size(L, H, T, D, keys.dtype, codec))
    mv = memoryview(buf)
    mv[HEADER_SIZE:HEADER_SIZE + T] = kinds.detach().to("cpu", torch.uint8).contiguous().numpy().tobytes()
    if codec is not None and keys.numel():
        payload = codec.encode(torch.stack((keys.detach().cpu(), values.detach().cpu()), dim=1))
        for p, (dtype, shape, at) in zip(payload, _payload_layout(codec, (L, 2, H, T, D))[0]):
            dst = torch.frombuffer(buf, dtype=dtype, offset=off + at, count=p.numel()).view(shape)
            dst.copy_(p)
    elif keys.numel():
        # Write straight into the output buffer: one copy per tensor, no temporary stack.
        dst = torch.frombuffer(buf, dtype=keys.dtype, offset=off).view(L, 2, H, T, D)
        dst[:, 0].copy_(keys.detach())
        dst[:, 1].copy_(values.detach())
    version, field = (VERSION, 0) if codec is None else (CODEC_VERSION, _codec_field(codec))
    HEADER.pack_into(buf, 0, MAGIC, version, DTYPE_CODES[keys.dtype], checksum, L, H, T, D, off, field, 0)
    struct.pack_into("<Q", buf, _CSUM_AT, _checksum(mv, checksum))
    return buf


def _checksum(mv: memoryview, algo: int) -> int:
    if algo == XXH3:
        if xxhash is None:
            raise KVStoreError("this blob is checksummed with xxh3: install the `xxhash` package")
        h = xxhash.xxh3_64()
        h.update(mv[:_CSUM_AT])
        h.update(mv[HEADER_SIZE:])
        return h.intdigest()
    return zlib.crc32(mv[HEADER_SIZE:], zlib.crc32(mv[:_CSUM_AT]))


def read_header(buf, where: dict | None = None) -> BlobHeader:
    """Parse and sanity-check the header (no checksum). `where`: video_id/index/level for errors."""
    where = where or {}
    if len(buf) < HEADER_SIZE:
        raise CorruptBlobError(f"blob is {len(buf)} bytes, shorter than its header", **where)
    magic, version, code, algo, L, H, T, D, off, field, _csum = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise CorruptBlobError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r})", **where)
    if version not in (VERSION, CODEC_VERSION):
        raise CorruptBlobError(f"unknown blob format version {version} (this build reads {VERSION} and "
                               f"{CODEC_VERSION})", **where)
    codec = None
    if version == CODEC_VERSION:
        if field & 0xFF not in BY_CODE:
            raise CorruptBlobError(f"unknown KV codec code {field & 0xFF}", **where)
        codec = BY_CODE[field & 0xFF](key_group=(field >> 8) & 0xFFF, value_group=field >> 20)
    if code not in CODE_DTYPES:
        raise CorruptBlobError(f"unknown dtype code {code}", **where)
    if algo not in (CRC32, XXH3):
        raise CorruptBlobError(f"unknown checksum algorithm {algo}", **where)
    hdr = BlobHeader(CODE_DTYPES[code], L, H, T, D, off, algo, codec)
    if off != _data_offset(T) or hdr.total_nbytes != len(buf):
        raise CorruptBlobError(f"size mismatch: header says {hdr.total_nbytes} bytes "
                               f"(data at {off}), blob has {len(buf)}", **where)
    return hdr


def decode(buf, *, verify: bool = True, where: dict | None = None) -> BlobView:
    """Decode a blob without copying when possible.

    buf: a bytes-like object; pass LMDB's memoryview (`buffers=True`) for zero-copy.
    verify: check the checksum (on by default: never feed corrupt bytes to the model).
    where: {video_id, index, level, key} named in a `CorruptBlobError`.
    """
    where = where or {}
    mv = memoryview(buf)
    hdr = read_header(mv, where)
    if verify:
        stored = struct.unpack_from("<Q", mv, _CSUM_AT)[0]
        actual = _checksum(mv, hdr.checksum_algo)
        if stored != actual:
            name = "xxh3" if hdr.checksum_algo == XXH3 else "crc32"
            raise CorruptBlobError(f"checksum mismatch (stored {name} {stored:016x}, computed {actual:016x})", **where)
    kinds = torch.frombuffer(mv, dtype=torch.uint8, count=hdr.tokens, offset=HEADER_SIZE) if hdr.tokens \
        else torch.empty(0, dtype=torch.uint8)
    if hdr.codec is not None:
        return _decode_payload(mv, hdr, kinds)
    n = hdr.data_nbytes // hdr.dtype.itemsize
    if n == 0:
        return BlobView(hdr, torch.empty(hdr.shape, dtype=hdr.dtype), kinds.clone(), False)
    kv = torch.frombuffer(mv, dtype=hdr.dtype, count=n, offset=hdr.data_offset).view(hdr.shape)
    if kv.data_ptr() % hdr.dtype.itemsize:
        # Small value stored unaligned inside an LMDB leaf page: copy rather than risk it.
        return BlobView(hdr, kv.clone(), kinds.clone(), False)
    return BlobView(hdr, kv, kinds, True)


def _decode_payload(mv: memoryview, hdr: BlobHeader, kinds: torch.Tensor) -> BlobView:
    """A codec blob's payload tensors as views of the buffer (copies where misaligned)."""
    if not hdr.tokens or not hdr.layers:
        return BlobView(hdr, None, kinds.clone(), False, [torch.zeros(sh, dtype=dt) for dt, sh in
                                                          hdr.codec.parts(hdr.shape)])
    layout = _payload_layout(hdr.codec, hdr.shape)[0]
    start = kinds.data_ptr() - HEADER_SIZE + hdr.data_offset          # kinds is a view of mv
    if all((start + at) % dtype.itemsize == 0 for dtype, _, at in layout):
        return BlobView(hdr, None, kinds, True, Payload(mv, hdr.data_offset, layout, start))
    # Stored unaligned inside an LMDB leaf page: copies rather than misaligned views.
    parts = [_view(mv, dtype, shape, hdr.data_offset + at).clone() for dtype, shape, at in layout]
    return BlobView(hdr, None, kinds.clone(), False, parts)


def _view(mv: memoryview, dtype: torch.dtype, shape: tuple, offset: int) -> torch.Tensor:
    return torch.frombuffer(mv, dtype=dtype, count=math.prod(shape), offset=offset).view(shape)


class Payload(Sequence):
    """A codec blob's payload tensors (Codec.parts, in order) as views of the buffer, made
    when first asked for. `layout` ((dtype, shape, offset), ...) and `addresses` (where each
    starts) describe them without making them: the one-pass kernel (native.py) needs only
    those, and a hot set is ~65 blobs of five tensors each."""

    __slots__ = ("_mv", "_offset", "layout", "addresses", "_tensors")

    def __init__(self, mv: memoryview, data_offset: int, layout: tuple, start: int):
        self._mv, self._offset, self.layout = mv, data_offset, layout
        self.addresses = tuple(start + at for _, _, at in layout)
        self._tensors = None

    def _made(self) -> list[torch.Tensor]:
        if self._tensors is None:
            self._tensors = [_view(self._mv, dtype, shape, self._offset + at) for dtype, shape, at in self.layout]
        return self._tensors

    def __getitem__(self, i):
        return self._made()[i]

    def __len__(self) -> int:
        return len(self.layout)
