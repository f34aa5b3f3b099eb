"""Triton kernels run on the GPU when there is one, else under Triton's interpreter.

NOTE: TRITON_INTERPRET is read when a kernel is decorated, so it must be set before any
`localllm.kernels.triton` module is imported; this conftest loads before the test modules.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


HAS_TRITON = _triton_importable()
# Real shapes on a GPU; small ones under the interpreter (it runs each program in Python).
KERNEL_DEVICE = "cuda" if HAS_CUDA else "cpu"
REAL_SHAPES = HAS_CUDA

requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


def load_benchmark(name: str):
    """A script of benchmarks/ (not a package) as a module, for the tests that run its GPU
    sections at toy shapes on the CPU."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # NOTE: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def wall_timer(fn) -> float:
    """Milliseconds of one call: the benchmarks' timer where do_bench's CUDA events do not exist."""
    import time

    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1e3
