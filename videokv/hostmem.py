"""The process's heap policy: freed memory is kept for the next question, not returned to the
OS and faulted back in.

Why: glibc serves a large allocation with a fresh mapping and returns freed memory at the top
of its heap to the OS, both past thresholds that start at 128 KiB and adapt. A question on the
CPU path allocates tens of megabytes (the hot set, the assembled cache, the rotation's
temporaries) and frees them when it is answered, so the next question touches every page
again: on the 1,024-frame quant bench, ~16,800 minor page faults (66 MB) a question, ~19 ms
of the 27 ms it took to assemble the cache. With the mmap threshold fixed at glibc's ceiling
for it (32 MiB on 64-bit) and the trim threshold at `keep_bytes`, that memory stays in the
process: RSS stays at its peak between questions instead of dropping and climbing back. The
trim threshold holds per arena (threads other than the main one may get their own), so a
process can keep more than `keep_bytes` in all.
Allocations over 32 MiB (a long video's hot set) are still mapped fresh each time.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # mallopt parameters (glibc's malloc.h)
MMAP_THRESHOLD_MAX = 32 << 20                   # glibc's limit on 64-bit: 4 MiB * sizeof(long)
INT_MAX = (1 << 31) - 1                         # mallopt takes a C int


def keep_freed_memory(keep_bytes: int) -> bool:
    """Keep up to `keep_bytes` of freed memory at the top of each glibc heap (arena) in the
    process (0: leave the allocator as it is). True when the allocator took the setting; False
    on a C library without glibc's mallopt (the process then runs as before). A ValueError
    for a value mallopt's int cannot hold (ctypes would wrap it silently)."""
    if not 0 <= keep_bytes <= INT_MAX:
        raise ValueError(f"keep_bytes must be 0 to {INT_MAX}, got {keep_bytes}")
    if keep_bytes == 0:
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)      # this process's C library
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The mmap threshold goes to its ceiling whatever keep_bytes is: below glibc's own 128 KiB
    # start it would map more allocations fresh, not fewer.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and mallopt(M_TRIM_THRESHOLD, keep_bytes))
