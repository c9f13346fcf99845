"""Peak live tensor memory of a block of code, on any device (CPU included).

CUDA has max_memory_allocated; the CPU allocator keeps no such statistic. This counts,
through a TorchDispatchMode, every storage created by an op inside the block and frees it
when the last tensor viewing it dies. Tensors created before the block (weights) are not
counted: the figure is the block's own working set."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakTensorMemory(TorchDispatchMode):
    """with PeakTensorMemory() as m: ...; m.peak_bytes, m.live_bytes"""

    def __init__(self):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._refs: dict[int, list[int]] = {}  # storage ptr -> [tensors alive, nbytes]

    def _release(self, ptr: int) -> None:
        ref = self._refs.get(ptr)
        if ref is None:
            return
        ref[0] -= 1
        if ref[0] == 0:
            self.live_bytes -= ref[1]
            del self._refs[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr == 0:
                continue
            ref = self._refs.get(ptr)
            if ref is None:
                ref = self._refs[ptr] = [0, storage.nbytes()]
                self.live_bytes += ref[1]
                self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            ref[0] += 1
            weakref.finalize(t, self._release, ptr)
        return out
