"""The one-pass fp8/int8/int4 dequantizer (dequant.c), called through ctypes.

scripts/setup.sh builds it next to this file (`_dequant.so`); where it is not built (no C
compiler) or cannot take a layout, `dequantize_into` returns False and the codec's torch path
(`decode_into_torch` in codecs.py) does the same arithmetic in three passes. Both give the
same bits (tested).
The call releases the GIL; it runs on the calling thread (dequant.c says why).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
from pathlib import Path

import torch

LIBRARY = Path(__file__).with_name("_dequant.so")
log = logging.getLogger(__name__)
_enabled = True


@contextlib.contextmanager
def disabled():
    """The torch path while inside (the quant bench times both; process-wide, not for servers)."""
    global _enabled
    was, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = was


def built() -> bool:
    """Whether fp8/int8/int4 decode uses the kernel in this process."""
    return _enabled and library() is not None


@functools.cache
def library() -> ctypes.CDLL | None:
    """The built kernel, or None (not built, or it does not load: logged once)."""
    if not LIBRARY.exists():
        return None
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError as e:
        log.warning("%s does not load (%s): fp8/int8/int4 decode on the torch path", LIBRARY, e)
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.vkv_dequantize.argtypes = [ptr, i64, i64, i64, i64, i64, i64, ptr, i64, ptr]
    lib.vkv_dequantize.restype = ctypes.c_int
    return lib


def _takes(out: torch.Tensor) -> bool:
    """out [L, 2, H, T, D] float32 on the CPU, each (layer, k/v, head) plane a block of whole rows."""
    if out.dim() != 5 or out.dtype != torch.float32 or not out.is_cpu:
        return False
    _, _, H, _, D = out.shape
    s = out.stride()
    return s[4] == 1 and s[3] == D and s[2] >= out.shape[3] * D and s[1] == H * s[2] and s[0] == 2 * s[1]


@functools.cache
def fp8_values() -> torch.Tensor:
    """float32 [256]: what torch decodes each e4m3 code to (so the kernel gives its bits)."""
    return torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()


def _described(parts) -> tuple[list[int], list[tuple], list[torch.dtype]] | None:
    """(addresses, shapes, dtypes) of a payload's parts: read off a blob's layout without
    making its tensors (blob.Payload), or off tensors (contiguous CPU ones; else None)."""
    layout = getattr(parts, "layout", None)
    if layout is not None:
        return list(parts.addresses), [tuple(sh) for _, sh, _ in layout], [dt for dt, _, _ in layout]
    if not all(p.is_contiguous() and p.is_cpu for p in parts):
        return None
    return [p.data_ptr() for p in parts], [tuple(p.shape) for p in parts], [p.dtype for p in parts]


def dequantize_into(codec, items: list, out: torch.Tensor) -> bool:
    """Blobs' rows, one after another along out's token axis, dequantized into out
    [L, 2, H, sum of rows, D] by `codec` (codecs.Fp8, Int8 or Int4); items [(parts, rows)]:
    parts its payload as `codec.parts` lays it out (tensors, or a blob.Payload), rows None or
    a slice. False when it did nothing: not built, another codec, or a layout it does not
    take (index rows, another dtype, non-contiguous parts, int4 with an odd value group);
    dequant.c checks its own bounds again."""
    lib = library() if _enabled else None
    if lib is None or codec.name not in ("fp8", "int8", "int4") or not _takes(out) or not items:
        return False
    L, _, H, _, D = out.shape
    blobs, value_groups, total = [], set(), 0
    for parts, rows in items:
        described = _described(parts)
        if described is None or isinstance(rows, torch.Tensor) or len(described[1][0]) != 5:
            return False
        addresses, shapes, dtypes = described
        T = shapes[0][3]
        start, stop = (0, T) if rows is None else (rows.start, rows.stop)
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= T) \
                or rows is not None and rows.step not in (None, 1):
            return False                    # the torch path takes (or refuses) any other slice
        want = codec.parts((L, 2, H, T, D))
        if shapes != [tuple(sh) for _, sh in want] or dtypes != [dt for dt, _ in want]:
            return False                    # the C code trusts these: the torch path raises instead
        kg, vg = codec.groups(T, D)
        value_groups.add(vg)
        total += stop - start
        if stop > start:                    # fp8 has no minima: [codes, key scale, value scale]
            stats = addresses[1:] if len(want) == 5 else [addresses[1], 0, addresses[2], 0]
            blobs.append([addresses[0], *stats, T, start, stop - start, shapes[1][2], kg])
    if len(value_groups) != 1 or total != out.shape[3]:
        return False
    if not blobs:
        return True
    table = torch.tensor(blobs, dtype=torch.int64)
    bits = 4 if codec.name == "int4" else 8
    fp8 = fp8_values().data_ptr() if codec.name == "fp8" else None
    return lib.vkv_dequantize(table.data_ptr(), len(blobs), bits, L, H, D, value_groups.pop(), out.data_ptr(),
                              out.stride(2), fp8) == 0
