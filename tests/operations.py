"""Every aten operation a piece of code runs, for tests that must know (CUDA graph capture cannot hold an
operation whose result the host waits for)."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode  # no public way to see every operation run

#: Operations whose result the host must wait for: .item() and friends, and outputs sized by the data.
HOST_WAITS = ("aten._local_scalar_dense", "aten.nonzero", "aten._unique", "aten.unique", "aten.masked_select",
              "aten.repeat_interleave.Tensor", "aten.is_nonzero")


class Operations(TorchDispatchMode):
    """Records the name of every aten operation run inside it (autograd's backward ones too)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))

    def host_waits(self) -> set[str]:
        return {name for name in self.names if name.startswith(HOST_WAITS)}
