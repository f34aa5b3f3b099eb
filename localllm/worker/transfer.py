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
