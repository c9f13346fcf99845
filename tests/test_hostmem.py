"""The heap policy (videokv/hostmem.py): a Runtime keeps freed memory in the process, so a
question's tensors reuse the pages the last one freed instead of faulting fresh ones in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# 100 tensors of 1.2 MB, filled and freed, as a question's per-layer cache tensors are: the
# minor page faults of three such rounds after a first (which maps fresh memory either way).
# 120 MB is over what glibc's own adaptive policy ever keeps (its trim threshold tops out at
# 64 MiB), whatever ran before. Measured: kept 293-2,931 faults, glibc's policy 29,547-87,788.
ROUNDS = """
import ctypes, resource, sys
# Small pages for this process, so faults count the same on a host whose transparent huge
# pages are "always" (with 2 MiB pages, 120 MB is ~60 faults either way).
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)            # PR_SET_THP_DISABLE
import torch
from videokv.runtime import Runtime
from videokv.settings import Settings
Runtime(Settings(malloc_keep_bytes=int(sys.argv[1])))
def faults():
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.ones(300_000) for _ in range(100)]
    del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
faults()
print(sum(faults() for _ in range(3)))
"""


def _faults(keep_bytes: int, home) -> int:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | {"VIDEOKV_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", ROUNDS, str(keep_bytes)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def test_a_runtime_keeps_freed_memory_so_the_next_round_does_not_fault(tmp_path):
    from videokv.hostmem import keep_freed_memory
    if not keep_freed_memory(512 << 20):
        pytest.skip("this C library has no glibc mallopt")
    pages = 100 * 300_000 * 4 // 4096                # ~29,300 pages a round; 3 rounds counted
    kept = _faults(512 << 20, tmp_path)
    default = _faults(0, tmp_path)                   # the C library's own policy: the control
    assert kept < pages // 4, (kept, default)
    assert default > pages // 2, (kept, default)     # this test can see the faults it rules out


def test_zero_keeps_the_c_library_policy_and_a_negative_value_is_a_settings_error(monkeypatch):
    from videokv.hostmem import keep_freed_memory
    from videokv.runtime import SettingsError, load_settings
    from videokv.settings import get_settings
    assert keep_freed_memory(0) is False
    for bad in (-1, 1 << 31):                        # a C int: ctypes would wrap it silently
        with pytest.raises(ValueError, match="keep_bytes"):
            keep_freed_memory(bad)
    monkeypatch.setenv("VIDEOKV_MALLOC_KEEP_BYTES", "-1")
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match="VIDEOKV_MALLOC_KEEP_BYTES"):
            load_settings()
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
