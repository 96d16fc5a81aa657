"""Count the reads of device tensors by the host (each one a device-to-host sync on a GPU), on
any machine: every tensor is taken to live on the device except those the host already holds,
that is results of ``.cpu()`` and whatever is computed from host tensors alone.

    with HostSyncCounter() as syncs:
        loss = module.shared_step(batch)[0]
        loss.backward()
    syncs.total, syncs.by_place  # e.g. 2, {"models/grid.py:52 tolist": 2}
"""
from __future__ import annotations

import collections
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

COUNTERS = ("utils/host_syncs.py", "utils/op_count.py")
READS = ("tolist", "item", "numpy", "__bool__", "__int__", "__float__", "__index__")
# operations whose output size depends on the data: the host waits for the device to learn it
aten = torch.ops.aten
DATA_SIZED = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
              aten.unique_consecutive.default}


class HostSyncCounter(TorchDispatchMode):
    """Counts ``.cpu()``, ``.tolist()``, ``.item()``, ``.numpy()`` and Python truth/number
    conversions of device tensors, and operations whose output size depends on device data
    (``nonzero``, boolean-mask indexing, ``unique``...); ``by_place`` names the calling line
    inside ``package``."""

    def __init__(self, package: str = "stjepa/"):
        super().__init__()
        self.package = package
        self.by_place: collections.Counter[str] = collections.Counter()
        self._saved: dict[str, object] = {}

    @property
    def total(self) -> int:
        return sum(self.by_place.values())

    def _count(self, what: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2] if self.package in f.filename.replace("\\", "/")
                  and not f.filename.replace("\\", "/").endswith(COUNTERS)]  # not the counting modes themselves
        place = f"{frames[-1].filename.replace(chr(92), '/').split(self.package)[-1]}:{frames[-1].lineno}" if frames else "?"
        self.by_place[f"{place} {what}"] += 1

    @staticmethod
    def _on_host(t: torch.Tensor) -> bool:
        return getattr(t, "_held_by_host", False)

    @staticmethod
    def _mark_host(t: torch.Tensor) -> None:
        t._held_by_host = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in tree_flatten((args, kwargs or {}))[0] if isinstance(a, torch.Tensor)]
        on_device = [t for t in inputs if not self._on_host(t)]
        boolean_index = func is aten.index.Tensor and any(t.dtype == torch.bool for t in on_device)
        if on_device and (func in DATA_SIZED or boolean_index):
            self._count(func.__name__)
        if inputs and all(self._on_host(t) for t in inputs):  # computed from host tensors: on the host
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self._mark_host(t)
        return out

    def __enter__(self):
        counter = self

        def reading(name: str, original):
            def read(tensor, *args, **kwargs):
                if not counter._on_host(tensor):
                    counter._count(name)
                return original(tensor, *args, **kwargs)
            return read

        def to_host(tensor, *args, **kwargs):
            if not counter._on_host(tensor):
                counter._count("cpu")
            out = counter._saved["cpu"](tensor, *args, **kwargs)
            if out is tensor:  # already on the CPU here; a GPU would copy, so the device tensor stays unmarked
                out = out.clone()
            counter._mark_host(out)
            return out

        for name in (*READS, "cpu"):
            self._saved[name] = getattr(torch.Tensor, name)
        for name in READS:
            setattr(torch.Tensor, name, reading(name, self._saved[name]))
        torch.Tensor.cpu = to_host
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)
