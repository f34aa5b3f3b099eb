"""Peak memory of a block of work: GPU bytes allocated by torch on CUDA; on the CPU the growth of
the process's resident set (Linux: VmHWM, reset through /proc/self/clear_refs so that earlier
peaks do not count). NOTE: RSS counts what the allocator keeps after frees, so a CPU figure is
the growth over the resident set at the start, not bytes live at once; None where unmeasurable."""

from __future__ import annotations

import re

import torch


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


class PeakMemory:
    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._baseline: int | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            self._baseline = None
            return self
        rss = _status_kib("VmRSS")
        self._baseline = rss * 1024 if rss is not None else None
        return self

    def __exit__(self, *exc) -> None:
        return None

    def peak_bytes(self) -> int | None:
        """Peak over the baseline so far."""
        if self._baseline is None:
            return None
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self._baseline
        hwm = _status_kib("VmHWM")
        return None if hwm is None else max(0, hwm * 1024 - self._baseline)


def release_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc's malloc_trim; nothing elsewhere).

    NOTE: without it, glibc keeps the freed activations of each layer in a fragmented heap and
    the resident set of a layer-by-layer pass grows by ~100 MB per SmolLM2 layer (measured); with
    it the growth is the quantized tensors written so far."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
