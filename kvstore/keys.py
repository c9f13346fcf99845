"""LMDB key layout. Every KV key starts with the model fingerprint and content hash.

    blobs       {fingerprint}/{content_hash}/{index:06d}/{level}     index -1 (prompt prefix) = "-00001"
    chunks      {fingerprint}/{content_hash}/{index:06d}
    embeddings  {fingerprint}/{content_hash}/{index:06d}/{oracle_id}@{dim}
    blobs       {fingerprint}/{content_hash}/transcript                the text channel (JSON)
    blobs       {fingerprint}/{content_hash}/transcript/{index:06d}    its segments final at a group commit
    blobs       {fingerprint}/{content_hash}/transcript-open           those still open then
    contents    {fingerprint}/{content_hash}

Because the fingerprint is the first component, a model or config never reads another's
blobs, and one content's keys are one contiguous range (delete is a range delete).
"""

from __future__ import annotations

import re
import struct

# Key components may be anything printable except the separators we use: "/" (key
# components), "@" (oracle@dim), NUL (tenant index) and whitespace.
_TOKEN = re.compile(r"^[^/@\s\x00]+$")
_U64 = struct.Struct(">Q")  # big-endian so byte order == numeric order in LMDB


def check_token(name: str, value: str) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise ValueError(f"{name} must be a non-empty string without '/', '@', NUL or spaces, got {value!r}")
    return value


def content_key(fingerprint: str, content_hash: str) -> str:
    return f"{check_token('fingerprint', fingerprint)}/{check_token('content_hash', content_hash)}"


def chunk_key(ck: str, index: int) -> bytes:
    return f"{ck}/{index:06d}".encode()


def blob_key(ck: str, index: int, level: str) -> bytes:
    return f"{ck}/{index:06d}/{level}".encode()


def transcript_key(ck: str) -> bytes:
    return f"{ck}/transcript".encode()


def transcript_part_key(ck: str, first_chunk: int | None) -> bytes:
    """Segments that became final at the group commit of `first_chunk` (None: the prefix of
    every part), merged into the transcript when the video is READY."""
    return f"{ck}/transcript/".encode() + (b"" if first_chunk is None else f"{first_chunk:06d}".encode())


def transcript_open_key(ck: str) -> bytes:
    """Text segments still open at the last group commit (a resumed ingest continues them)."""
    return f"{ck}/transcript-open".encode()


def oracle_key(oracle_id: str, dim: int) -> str:
    return f"{check_token('oracle_id', oracle_id)}@{int(dim)}"


def emb_key(ck: str, index: int, okey: str) -> bytes:
    return f"{ck}/{index:06d}/{okey}".encode()


def frames_key(ck: str, index: int, okey: str) -> bytes:
    """A chunk's per-frame vectors for one oracle (in the embeddings database, never indexed:
    the ':' keeps the key from ending in "/okey", which the index rebuild looks for)."""
    return f"{ck}/{index:06d}/frames:{okey}".encode()


def tenant_key(tenant: str, video_id: str) -> bytes:
    return f"{check_token('tenant', tenant)}\0{video_id}".encode()


def u64(n: int) -> bytes:
    return _U64.pack(n)


def from_u64(b) -> int:
    return _U64.unpack(bytes(b))[0]
