"""What a figure was measured on: the machine, its load, the software, and its memory bandwidth."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import time

# distribution name -> the key it is recorded under
PACKAGES = {"localllm": "localllm", "torch": "torch", "transformers": "transformers",
            "llama_cpp_python": "llama_cpp", "httpx": "httpx"}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def gpu_info() -> dict | None:
    """The CUDA devices torch sees, with the driver version from nvidia-smi; None without CUDA
    (or without torch). Imports torch only when it is installed."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append({"name": props.name, "memory_bytes": props.total_memory,
                        "compute_capability": f"{props.major}.{props.minor}"})
    return {"devices": devices, "driver": _nvidia_driver(), "cuda_runtime": torch.version.cuda}


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


# Settings that change a CPU figure several-fold (OMP_WAIT_POLICY=PASSIVE on a loaded machine:
# threads that spin while waiting starve each other) or pick other kernels: recorded when set.
ENVIRONMENT = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "LOCALLLM_KERNELS", "TRITON_INTERPRET",
               "CUDA_VISIBLE_DEVICES")


def machine_info() -> dict:
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": memory_bytes(),
        "platform": platform.platform(),
        "load_average": load_average(),
        "gpu": gpu_info(),
        "environment": {name: os.environ[name] for name in ENVIRONMENT if name in os.environ},
    }
    if importlib.util.find_spec("torch") is not None:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    return info


def software_versions() -> dict:
    versions = {"python": platform.python_version()}
    for distribution, key in PACKAGES.items():
        try:
            versions[key] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def measure_memory_bandwidth(device: str = "cpu", size_bytes: int = 256 << 20, repeats: int = 5) -> dict:
    """Copy bandwidth (bytes read + written per second) of a buffer far larger than the caches,
    best of `repeats` copies: the ceiling a decode step that streams its weights can reach."""
    import torch

    src = torch.ones(size_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages once
    best = float("inf")
    for _ in range(repeats):
        if src.is_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        dst.copy_(src)
        if src.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return {
        "GBps": round(2 * size_bytes / best / 1e9, 2),
        "device": str(src.device),
        "method": f"measured: torch copy_ of a {size_bytes >> 20} MiB buffer on {src.device}, bytes read + "
                  f"written, best of {repeats} (torch threads: {torch.get_num_threads()})",
    }


def process_memory(device: str = "cpu") -> dict:
    """This process's resident memory now (Linux: /proc/self/statm), and on CUDA the most torch
    has held since the last reset of its peak counter."""
    out: dict = {"rss_bytes": None}
    try:
        with open("/proc/self/statm") as f:
            out["rss_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        out["rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the peak, in KiB on Linux
    if device.startswith("cuda"):
        import torch

        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["cuda_reserved_bytes"] = torch.cuda.memory_reserved()
    return out


def reset_cuda_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
