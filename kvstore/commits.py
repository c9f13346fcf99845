"""Committing a video's chunks: several chunks per write transaction (group commits), the
text channel's segments as they become final, and the last transaction that makes it READY.

Why groups: a write transaction costs an fsync whatever it holds, so one chunk per
transaction made ingest slow down as videos grew; a group of chunks commits together,
and a kill loses at most the group in flight. Chunks commit in order, so the committed
chunks of a video are always 0..k-1: a resumed ingest starts at k.

The video record is not rewritten per chunk beyond its small counters: its plan (one span
per chunk) is written once, by `finish`, when every chunk is there.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from videokv.engine.chunkkv import ChunkSpan, TokenKind

from . import blob as blobfmt
from . import keys as K
from .backend import StorageBackend
from .catalog import ChunkRecord, Status, VideoRecord, _frames, _log, _plan, _vec, content_seq, load_video
from .errors import FingerprintMismatchError, NotReadyError


@dataclass
class ChunkWrite:
    """One chunk's commit: its levels (ChunkKVs of one index: L and H, the prompt prefix's
    "full", and G for the first chunk of a gist group), embeddings {oracle_id: [dim]},
    per-frame vectors {oracle_id: [frames, dim]} (float16, not indexed), and whether the
    chunk has a text-channel line."""

    levels: list
    embeddings: Mapping[str, object] = field(default_factory=dict)
    frame_vectors: Mapping[str, object] = field(default_factory=dict)
    text_line: bool = False


def put_chunks(env: StorageBackend, video_id: str, writes: list[ChunkWrite],
               transcript_part: list[dict] | None = None, transcript_open: list[dict] | None = None,
               part_at: int | None = None, codec=None) -> int:
    """Commit the chunks of `writes` in ONE write transaction: all of them or none. Chunks
    already committed are skipped (a resumed or duplicated ingest never stores one twice).
    transcript_part: text segments that became final since the last commit; transcript_open:
    those still open (replaces the previous checkpoint); part_at: where the part is filed
    (default: the group's first chunk); codec: the storage codec of the chunks' K,V
    (codecs.py; None: as they are). Returns how many chunks were new."""
    encoded = [(w, _encode(w, codec)) for w in writes]          # outside the transaction
    now = time.time()

    def fn(txn):
        rec = load_video(txn, video_id)
        ck, seq, new = rec.content_key, content_seq(txn, rec.content_key), 0
        for w, (idx, blobs, embs, frames) in encoded:
            for c in w.levels:
                if c.fingerprint != rec.fingerprint:
                    raise FingerprintMismatchError(
                        f"chunk {idx} level {c.level} was made with fingerprint {c.fingerprint!r}, "
                        f"video {video_id} expects {rec.fingerprint!r}")
            if rec.plan and idx >= rec.chunks_total:
                raise ValueError(f"chunk {idx} is outside video {video_id}'s plan of {rec.chunks_total} chunks")
            if txn.get("chunks", K.chunk_key(ck, idx)) is not None:
                continue
            _write_chunk(txn, ck, seq, idx, w, blobs, embs, frames, now)
            new += idx >= 0
        if transcript_part:
            at = part_at if part_at is not None else min(c.index for w in writes for c in w.levels)
            txn.put("blobs", K.transcript_part_key(ck, at), json.dumps(transcript_part).encode())
        if transcript_open is not None:
            txn.put("blobs", K.transcript_open_key(ck), json.dumps(transcript_open).encode())
        rec.chunks_done += new
        if rec.status is Status.QUEUED:
            rec.status = Status.INGESTING
        rec.updated = now
        txn.put("catalog", video_id.encode(), rec.to_json())
        return new

    return env.write(fn)


def _encode(w: ChunkWrite, codec=None):
    levels = list(w.levels)
    if not levels:
        raise ValueError("a chunk write needs at least one level")
    idx = levels[0].index
    if len({c.level for c in levels}) != len(levels) or any(c.index != idx for c in levels):
        raise ValueError("levels must be distinct levels of the same chunk index")
    embs = {oid: _vec(v) for oid, v in (w.embeddings or {}).items()}
    frames = {oid: _frames(v) for oid, v in (w.frame_vectors or {}).items()}
    if idx < 0 and (embs or frames):
        raise ValueError("the prompt prefix (index -1) has no embeddings")
    return idx, [(c, blobfmt.encode(c.keys, c.values, c.kinds, codec=codec)) for c in levels], embs, frames


def _write_chunk(txn, ck: str, seq, idx: int, w: ChunkWrite, blobs, embs, frames, now: float) -> None:
    for c, buf in blobs:
        txn.put("blobs", K.blob_key(ck, idx, c.level), buf)
    okeys = []
    for oid, v in embs.items():
        okey = K.oracle_key(oid, v.size)
        ek = K.emb_key(ck, idx, okey)
        txn.put("embeddings", ek, v.tobytes())
        _log(txn, {"op": "add", "o": okey, "s": seq, "c": idx, "k": ek.decode()})
        okeys.append(okey)
    for oid, m in frames.items():            # [frames, dim] float16, row-major
        txn.put("embeddings", K.frames_key(ck, idx, K.oracle_key(oid, m.shape[1])), m.tobytes())
    first = blobs[0][0]
    crec = ChunkRecord(idx, first.frame_start, first.frame_end, first.t_start, first.t_end,
                       str(first.dtype).removeprefix("torch."), {c.level: c.tokens for c, _ in blobs},
                       {c.level: c.nbytes for c, _ in blobs}, okeys, now, w.text_line,
                       {c.level: int((c.kinds != TokenKind.TEXT).sum()) for c, _ in blobs})
    txn.put("chunks", K.chunk_key(ck, idx), crec.to_json())


def committed(env: StorageBackend, video_id: str) -> list[ChunkRecord]:
    """The video's committed chunk records, prefix excluded, by index."""
    with env.read() as txn:
        rec = load_video(txn, video_id)
        prefix = f"{rec.content_key}/".encode()
        out = []
        for key, raw in txn.scan("chunks", prefix=prefix):
            tail = key[len(prefix):]
            if tail.isdigit():                              # {index:06d}; the prefix is "-00001"
                out.append(ChunkRecord.from_json(raw))
        return sorted(out, key=lambda c: c.index)


def finish(env: StorageBackend, video_id: str, plan: Iterable[ChunkSpan], oracles: Iterable[str] = (),
           extra: Mapping | None = None, require_prefix: bool = True) -> VideoRecord:
    """READY in one transaction with the final plan and `extra` merged into the record, only
    if every chunk of the plan (and the prefix) is committed with index entries (an
    embedding for each of `oracles`, or for at least one oracle). The transcript parts
    become one transcript."""
    plan, oracles = _plan(plan), list(oracles)

    def fn(txn):
        rec = load_video(txn, video_id)
        ck = rec.content_key
        missing, unindexed = [], []
        if require_prefix and txn.get("chunks", K.chunk_key(ck, -1)) is None:
            missing.append(-1)
        for s in plan:
            raw = txn.get("chunks", K.chunk_key(ck, s.index))
            if raw is None:
                missing.append(s.index)
                continue
            have = {o.rsplit("@", 1)[0] for o in ChunkRecord.from_json(raw).oracles}
            if not have or any(o not in have for o in oracles):
                unindexed.append(s.index)
        if missing or unindexed:
            raise NotReadyError(video_id, missing, unindexed)
        _merge_transcript(txn, ck, (extra or {}).get("text"))
        rec.plan = plan
        rec.extra = {**(rec.extra or {}), **(extra or {})}
        rec.status, rec.reason, rec.chunks_done, rec.updated = Status.READY, "", len(plan), time.time()
        txn.put("catalog", video_id.encode(), rec.to_json())
        return rec

    return env.write(fn)


def _merge_transcript(txn, ck: str, channels: dict | None) -> None:
    """Parts and the open checkpoint -> the one transcript document (when there are parts)."""
    parts = [json.loads(bytes(v)) for _, v in txn.scan("blobs", prefix=K.transcript_part_key(ck, None))]
    open_raw = txn.get("blobs", K.transcript_open_key(ck))
    if not parts and open_raw is None:
        return
    doc_raw = txn.get("blobs", K.transcript_key(ck))
    doc = json.loads(bytes(doc_raw)) if doc_raw is not None else {"segments": [], "channels": {}}
    segments = [s for p in parts for s in p] + (json.loads(bytes(open_raw)) if open_raw is not None else [])
    doc["segments"] = _joined(doc["segments"] + segments)
    doc["channels"] = channels if channels is not None else doc.get("channels", {})
    txn.put("blobs", K.transcript_key(ck), json.dumps(doc, separators=(",", ":")).encode())
    txn.delete_prefix("blobs", K.transcript_part_key(ck, None))
    txn.delete("blobs", K.transcript_open_key(ck))


def open_text_segments(env: StorageBackend, video_id: str) -> list[dict]:
    """The text segments still open at the video's last group commit."""
    with env.read() as txn:
        raw = txn.get("blobs", K.transcript_open_key(load_video(txn, video_id).content_key))
        return [] if raw is None else json.loads(bytes(raw))


def _joined(segments: list[dict]) -> list[dict]:
    """Time-ordered, with a line split at a resume point (closed there, opened again there)
    joined back into one segment, and an utterance heard again by a resumed ingest (the
    same words at the same times: asr.SpeechStream) kept once."""
    out: list[dict] = []
    last: dict[tuple[str, str], dict] = {}
    for s in sorted(segments, key=lambda s: (s["t_start"], s["t_end"], s["source"], s["text"])):
        prev = last.get((s["source"], s["text"]))
        if prev is not None and s.get("words") and s == prev:
            continue
        if prev is not None and not s.get("words") and not prev.get("words") and s["t_start"] <= prev["t_end"] + 1e-6:
            prev["t_end"] = max(prev["t_end"], s["t_end"])
            continue
        out.append(s)
        last[(s["source"], s["text"])] = s
    return out


def put_transcript(env: StorageBackend, video_id: str, transcript: dict) -> None:
    """Store the video's text channel ({"segments": [...], "channels": {...}}) with its
    content (shared by deduplicated uploads, deleted with the content); the channel report
    also goes into the video record (`extra["text"]`), so a listing shows it."""
    raw = json.dumps(transcript, separators=(",", ":")).encode()

    def fn(txn):
        rec = load_video(txn, video_id)
        txn.put("blobs", K.transcript_key(rec.content_key), raw)
        rec.extra = {**(rec.extra or {}), "text": transcript.get("channels", {})}
        rec.updated = time.time()
        txn.put("catalog", video_id.encode(), rec.to_json())

    env.write(fn)


def get_transcript(env: StorageBackend, video_id: str) -> dict | None:
    """The video's text channel, or None when none was extracted. While it is still being
    ingested: the segments final so far and those still open."""
    with env.read() as txn:
        rec = load_video(txn, video_id)
        ck = rec.content_key
        raw = txn.get("blobs", K.transcript_key(ck))
        doc = json.loads(bytes(raw)) if raw is not None else None
        parts = [s for _, v in txn.scan("blobs", prefix=K.transcript_part_key(ck, None)) for s in json.loads(bytes(v))]
        open_raw = txn.get("blobs", K.transcript_open_key(ck))
        if not parts and open_raw is None:
            return doc
        doc = doc or {"segments": [], "channels": (rec.extra or {}).get("text", {})}
        doc["segments"] = doc["segments"] + parts + (json.loads(bytes(open_raw)) if open_raw is not None else [])
        return doc
