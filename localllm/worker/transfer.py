"""Host lists -> device tensors without stalling the host on the device.

NOTE: `torch.tensor(values, device="cuda")` copies from pageable memory and synchronizes the
stream, so the host waits for every kernel already queued. A pinned staging tensor and a
non-blocking copy keep the copy in stream order without that wait; torch's caching host
allocator keeps the staging memory alive until the copy has run.
"""

from __future__ import annotations

import torch


def to_device(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of `values` (a list, nested lists, or a CPU tensor) on `device`, in stream order."""
    if torch.device(device).type != "cuda":
        return torch.as_tensor(values, dtype=dtype, device=device)
    host = values.to(dtype) if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    return host.pin_memory().to(device, non_blocking=True)


class HostCopies:
    """Device tensors copied to host memory in stream order, without waiting for them: the host
    goes on queuing work, and `wait()` returns the copies once the device has made them.

    NOTE: `.tolist()` on a CUDA tensor waits for everything queued on the stream, including a
    step queued after this one; a copy queued now and an event after it wait for this step only.
    """

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self._event = None
        self._tensors = list(tensors)
        if any(t.device.type == "cuda" for t in self._tensors):
            self._tensors = [_pinned_copy(t) if t.device.type == "cuda" else t for t in self._tensors]
            self._event = torch.cuda.Event()
            self._event.record()

    def wait(self) -> list[torch.Tensor]:
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        return self._tensors


def _pinned_copy(tensor: torch.Tensor) -> torch.Tensor:
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)
