"""Summary statistics of timings: mean and percentiles with linear interpolation (numpy's default
method), so figures agree with vLLM's benchmark scripts."""

from __future__ import annotations

import math
from typing import Iterable

PERCENTILES = (50, 90, 99)


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) of `values`, interpolating between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Iterable[float], scale: float = 1.0) -> dict:
    """{"n", "mean", "p50", "p90", "p99", "min", "max"} of `values` times `scale` (e.g. 1000 for
    seconds -> ms); an empty list gives n = 0 and None for every figure."""
    scaled = [v * scale for v in values]
    if not scaled:
        return {"n": 0, "mean": None, **{f"p{q}": None for q in PERCENTILES}, "min": None, "max": None}
    return {
        "n": len(scaled),
        "mean": sum(scaled) / len(scaled),
        **{f"p{q}": percentile(scaled, q) for q in PERCENTILES},
        "min": min(scaled),
        "max": max(scaled),
    }
