"""A store read from the disk, for measurements: `drop_store_pages` puts a store's LMDB file
out of memory (this process's mapping and the operating system's page cache), so the next
question reads its KV from the disk, as the first question on a video does once an archive
is larger than memory. `resident_fraction` says how much of the file is still in memory
(mincore), so a figure measured after a drop can show that the drop worked: a filesystem
that ignores the advice (tmpfs keeps its pages) reports ~1.0, not a false disk figure.

Linux only (posix_fadvise, mincore); no privileges needed.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def data_file(store) -> Path:
    """The LMDB data file of a KVStore."""
    return Path(store.env.path) / "data.mdb"


def resident_fraction(path: Path) -> float:
    """The fraction of the file's pages in memory now (0 for an empty file)."""
    size = path.stat().st_size
    if not size:
        return 0.0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            pages = -(-size // _PAGE)
            vec = ctypes.create_string_buffer(pages)
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            return sum(b & 1 for b in vec.raw) / pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def drop_store_pages(store) -> float:
    """Put the store's file out of memory; the fraction of it still resident afterwards.

    The process's own mapping goes first (LmdbEnv.release_pages: pages mapped by a process
    are never evicted), then the kernel is told the file's cached pages are not needed."""
    store.env.release_pages()
    path = data_file(store)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return resident_fraction(path)
