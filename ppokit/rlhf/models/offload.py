"""``offload_frozen``: the frozen roles (reference, reward models) kept in CPU memory between phases.

A frozen model's weights never change, so its CPU copy stays the master copy for the whole run:
:meth:`CPUOffload.on_device` copies the weights to the device for one phase (the reference's forward
pass, one scoring call) and afterwards simply points the parameters back at the CPU tensors, dropping
the device copies. Nothing is ever copied back, and the numbers are those of a model that never moved.

On a CUDA device the CPU copies are pinned, so the copy to the device is asynchronous
(``non_blocking``) and ordered before the forward pass on the same stream; the device memory freed
afterwards goes back to PyTorch's caching allocator, where the update's activations and optimiser
state reuse it. On a CPU-only machine the device *is* the CPU and this is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


class CPUOffload:
    """A frozen ``module`` whose weights live in CPU memory and visit ``device`` only inside :meth:`on_device`."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.module = module
        self.device = torch.device(device)
        pin = self.device.type == "cuda"
        #: Each parameter and buffer (shared ones once), and its CPU copy.
        self._held: list[tuple[Tensor, Tensor]] = []
        for tensor in [*module.parameters(), *module.buffers()]:
            host = tensor.data.to("cpu")
            if pin:
                host = host.pin_memory()
            tensor.data = host
            self._held.append((tensor, host))

    @property
    def active(self) -> bool:
        """Whether the weights really move (the device is not the CPU)."""
        return self.device.type != "cpu"

    @contextlib.contextmanager
    def on_device(self) -> Iterator[nn.Module]:
        """The module with its weights on the device, for the duration of the block."""
        if not self.active:
            yield self.module
            return
        for tensor, host in self._held:
            tensor.data = host.to(self.device, non_blocking=True, copy=True)
        try:
            yield self.module
        finally:
            for tensor, host in self._held:
                tensor.data = host
