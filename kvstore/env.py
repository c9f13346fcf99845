"""The one LMDB environment: named databases, self-growing map, read sessions.

Concurrency model
- Processes: each process opens its own `lmdb.Environment` (py-lmdb refuses to open the
  same files twice in one process, and an Environment must never cross a fork). LMDB
  serialises writers across processes with its own lock; readers are MVCC snapshots and
  never block the writer.
- Threads in one process share one `LmdbEnv` (see `open_env`). Writes are additionally
  serialised in-process so a map resize never races a write transaction.
- Map growth: a write that hits `MapFullError` is aborted, the map is grown and the write
  function is run again from scratch (so write functions must only touch the txn). Another
  process that later begins a txn gets `MapResizedError`; we adopt the new size with
  `set_mapsize(0)` and retry. `set_mapsize` invalidates every open transaction of this
  process, and with it the memory that zero-copy views point at, so it waits until no
  read session of this process is open.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import lmdb

from .backend import TABLES
from .errors import KVStoreError

T = TypeVar("T")

# One LMDB named database per table of the storage interface (backend.py says what each holds).
DB_NAMES = TABLES


class LmdbTxn:
    """`backend.ReadTxn` / `WriteTxn` over one LMDB transaction and the named databases."""

    __slots__ = ("txn", "dbs")

    def __init__(self, txn, dbs: dict):
        self.txn, self.dbs = txn, dbs

    def get(self, table: str, key: bytes):
        return self.txn.get(key, db=self.dbs[table])

    def count(self, table: str) -> int:
        return self.txn.stat(self.dbs[table])["entries"]

    def put(self, table: str, key: bytes, value) -> None:
        self.txn.put(key, value, db=self.dbs[table])

    def delete(self, table: str, key: bytes) -> bool:
        return self.txn.delete(key, db=self.dbs[table])

    def scan(self, table: str, start: bytes = b"", prefix: bytes | None = None, keys_only: bool = False):
        cur = self.txn.cursor(db=self.dbs[table])
        first = max(start, prefix or b"")
        if not (cur.set_range(first) if first else cur.first()):
            return
        for key, value in cur.iternext(values=True):
            key = bytes(key)
            if prefix is not None and not key.startswith(prefix):
                return
            yield key, (None if keys_only else value)

    def delete_prefix(self, table: str, prefix: bytes) -> int:
        n = 0
        cur = self.txn.cursor(db=self.dbs[table])
        if cur.set_range(prefix):
            while cur.key()[:len(prefix)] == prefix:
                n += 1
                if not cur.delete():
                    break
        return n

DEFAULT_MAP_SIZE = 256 << 20
_GROW_STEP_MAX = 8 << 30  # double until 8 GiB, then grow 8 GiB at a time


class LmdbEnv:
    """One process's handle on the store's LMDB environment: the `backend.StorageBackend`.

    path: directory holding data.mdb / lock.mdb.
    map_size: initial map size in bytes (the map grows by itself; an existing larger map
        is kept).
    """

    def __init__(self, path: str | os.PathLike, map_size: int = DEFAULT_MAP_SIZE,
                 max_readers: int = 1024, sync: bool = True):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        # lock=True: LMDB's own cross-process reader table and writer mutex.
        # readahead=False: our values are large blobs read once each; OS readahead of
        # neighbouring pages mostly wastes page cache on random chunk access.
        self.env = lmdb.open(str(self.path), map_size=map_size, max_dbs=len(DB_NAMES) + 4,
                             max_readers=max_readers, lock=True, sync=sync, metasync=sync,
                             readahead=False, subdir=True)
        self._write_lock = threading.RLock()
        self._cond = threading.Condition()
        self._readers = 0          # open read sessions in this process
        self._remapping = False
        self._local = threading.local()  # per-thread read-session depth
        self.grow_count = 0        # how many times this process grew the map (tests, stats)
        # Opening (creating) the named DBs is a write like any other: another process may
        # already have grown the map past `map_size` (MapResizedError) or filled it.
        self.dbs: dict[str, object] = self._write_raw(
            lambda txn: {n: self.env.open_db(n.encode(), txn=txn, create=True) for n in DB_NAMES})

    # ---------------------------------------------------------------- info
    @property
    def map_size(self) -> int:
        return self.env.info()["map_size"]

    def _check_pid(self) -> None:
        if os.getpid() != self.pid:
            raise KVStoreError("this LMDB environment was opened before a fork; open the KVStore "
                               "in the child process instead (Celery: in worker_process_init)")

    # ---------------------------------------------------------------- writes
    def write(self, fn: Callable[[LmdbTxn], T]) -> T:
        """Run `fn(txn)` in one write transaction and commit it; return its result.

        `fn` may be run more than once (after a map growth), so it must have no side
        effects outside the transaction. Exceptions from `fn` abort the transaction.
        """
        return self._write_raw(lambda txn: fn(LmdbTxn(txn, self.dbs)))

    def _write_raw(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        self._check_pid()
        with self._write_lock:
            if getattr(self._local, "depth", 0):
                # The thread's own read snapshot would be invalidated by a resize and it
                # would also not see this write: almost certainly a bug in the caller.
                raise KVStoreError("cannot write while this thread holds a read session")
            while True:
                try:
                    txn = self.env.begin(write=True, buffers=False)
                except lmdb.MapResizedError:
                    self._remap(0)
                    continue
                try:
                    result = fn(txn)
                    txn.commit()
                    return result
                except lmdb.MapFullError:
                    txn.abort()
                    self._grow()
                except lmdb.MapResizedError:
                    txn.abort()
                    self._remap(0)
                except BaseException:
                    txn.abort()
                    raise

    def release_pages(self) -> None:
        """Drop this process's mapped pages of the map by remapping it in place (waits for
        this process's read sessions). Why: a write transaction reads B-tree pages out of the
        map, and each such fault also maps (the kernel's fault-around) the neighbouring pages
        of blobs just written, so a long ingest's RSS grew with what it had stored (hundreds
        of MB per 10 GB). The pages stay in the page cache; nothing is read again."""
        with self._write_lock:
            self._remap(0)

    def _grow(self) -> None:
        cur = self.map_size
        self._remap(cur * 2 if cur < _GROW_STEP_MAX else cur + _GROW_STEP_MAX)
        self.grow_count += 1

    def _remap(self, new_size: int) -> None:
        """set_mapsize(new_size) once no read session of this process is open (0 = adopt)."""
        with self._cond:
            if getattr(self._local, "depth", 0):
                raise KVStoreError("the LMDB map must be resized but this thread holds a read "
                                   "session; close it first")
            while self._remapping:
                self._cond.wait()
            self._remapping = True
            try:
                while self._readers:
                    self._cond.wait()
                self.env.set_mapsize(new_size)
            finally:
                self._remapping = False
                self._cond.notify_all()

    # ---------------------------------------------------------------- reads
    @contextmanager
    def read(self) -> Iterator[LmdbTxn]:
        """A read-only MVCC snapshot whose `get()` returns memoryviews into the map.

        The memoryviews (and tensors made from them) are valid only inside this block.
        """
        self._check_pid()
        while True:
            with self._cond:
                while self._remapping:
                    self._cond.wait()
                self._readers += 1
            self._local.depth = getattr(self._local, "depth", 0) + 1
            try:
                txn = self.env.begin(write=False, buffers=True)
            except lmdb.MapResizedError:
                self._release_reader()
                self._remap(0)
                continue
            except BaseException:
                self._release_reader()
                raise
            break
        try:
            yield LmdbTxn(txn, self.dbs)
        finally:
            txn.abort()
            self._release_reader()

    def _release_reader(self) -> None:
        self._local.depth -= 1
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def close(self) -> None:
        with self._write_lock:
            self.env.close()
        with _OPEN_LOCK:
            if _OPEN.get(getattr(self, "_key", None)) is self:
                del _OPEN[self._key]


# One LmdbEnv per (process, directory): LMDB forbids two opens of the same files in one
# process. Keyed by pid too, so a forked child gets a clear error rather than corruption.
_OPEN: dict[tuple[int, str], LmdbEnv] = {}
_OPEN_LOCK = threading.Lock()


def open_env(path: str | os.PathLike, map_size: int = DEFAULT_MAP_SIZE, **kw) -> LmdbEnv:
    """The process-wide `LmdbEnv` for `path`, opened on first use."""
    key = (os.getpid(), str(Path(path).resolve()))
    with _OPEN_LOCK:
        env = _OPEN.get(key)
        if env is None:
            env = LmdbEnv(path, map_size=map_size, **kw)
            env._key = key
            _OPEN[key] = env
        return env
