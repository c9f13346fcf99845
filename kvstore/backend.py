"""The storage-backend interface the store is written against, as LMCache keeps its backends
behind one small interface: named tables of ordered byte keys -> byte values, read in
consistent snapshots and written in atomic transactions. The catalog, the blobs, the
embeddings and the FAISS change log are all tables. `env.LmdbEnv` is the implementation
(zero-copy reads out of LMDB's memory map); another backend implements these three types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol, TypeVar

T = TypeVar("T")

# catalog: video_id -> VideoRecord json; tenants: tenant\0video_id -> b""; contents:
# fingerprint/content_hash -> content json (dedup, refcount, content_seq); seqs: content_seq
# (u64 BE) -> fingerprint/content_hash; chunks: fp/hash/idx -> ChunkRecord json; blobs:
# fp/hash/idx/level -> KV blob; embeddings: fp/hash/idx/oracle -> float32[dim]; emblog:
# log_seq (u64 BE) -> json change record (drives FAISS catch-up); meta: counters.
TABLES = ("catalog", "tenants", "contents", "seqs", "chunks", "blobs", "embeddings", "emblog", "meta")


class ReadTxn(Protocol):
    """One consistent snapshot. Values are buffers valid until the snapshot ends."""

    def get(self, table: str, key: bytes) -> memoryview | bytes | None: ...

    def count(self, table: str) -> int:
        """How many keys the table holds."""
        ...

    def scan(self, table: str, start: bytes = b"", prefix: bytes | None = None,
             keys_only: bool = False) -> Iterator[tuple[bytes, memoryview | bytes | None]]:
        """(key, value) pairs in key order from the first key >= start (or >= prefix), while
        keys start with `prefix` when one is given."""
        ...


class WriteTxn(ReadTxn, Protocol):
    def put(self, table: str, key: bytes, value: bytes) -> None: ...

    def delete(self, table: str, key: bytes) -> bool: ...

    def delete_prefix(self, table: str, prefix: bytes) -> int:
        """Delete every key starting with `prefix`; how many."""
        ...


class StorageBackend(Protocol):
    def read(self) -> AbstractContextManager[ReadTxn]: ...

    def write(self, fn: Callable[[WriteTxn], T]) -> T:
        """Run fn in one transaction and commit it (fn may run again after a retry: it must
        touch nothing but the transaction)."""
        ...

    def release_pages(self) -> None:
        """Let go of whatever of the store this process holds resident that the system can
        read again (a long writer calls it between transactions); may do nothing."""
        ...

    def close(self) -> None: ...
