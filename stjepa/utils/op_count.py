"""Count the ATen operations a piece of code dispatches, on any machine.

On a GPU every non-view operation launches at least one kernel, so the count approximates a
training step's kernel launches (what makes a small step CPU-bound: each launch costs the host
a few microseconds). Views and allocations launch nothing and are not counted.
``aten._local_scalar_dense`` (``.item()``, ``.tolist()``, ``bool()`` of a tensor) is a
device-to-host sync; :class:`~stjepa.utils.host_syncs.HostSyncCounter` names where each comes
from.

    with OpCounter() as ops:
        step()
    ops.total, ops.by_op.most_common(5)
"""
from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
# operations that allocate or describe memory without a kernel
NO_KERNEL = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default}


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.by_op: collections.Counter[str] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    @property
    def scalar_reads(self) -> int:
        return self.by_op["_local_scalar_dense"]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func not in NO_KERNEL:
            self.by_op[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))
