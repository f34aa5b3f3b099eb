"""Quantizing holds one decoder layer at a time: the peak memory it reports (growth of the
resident set on the CPU, see quant.memory) for a 12-layer model is about that of a 2-layer model
of the same width, and far below the 12-layer model's weights."""

from __future__ import annotations

import sys

import pytest

from localllm.quant.quantize import QuantizeOptions, quantize_model
from tests.quant.tiny import random_tiny_model

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc")

WIDTH = dict(hidden=256, inter=512, heads=4, kv_heads=4)


def peak_of(tmp_path, layers: int) -> tuple[int, int, int]:
    src = random_tiny_model(str(tmp_path / f"src{layers}"), seed=layers, layers=layers, **WIDTH)
    # NOTE: a shard smaller than a layer, as the 512 MiB default is for an 8B model (0.9 GB a layer).
    options = QuantizeOptions(method="gptq", group_size=64, num_samples=8, seq_len=64, num_heldout=2,
                              max_shard_bytes=2 << 20)
    report = quantize_model(src, str(tmp_path / f"out{layers}"), options)
    return report.peak_memory, report.largest_layer, report.memory_original_16bit * 2


def test_peak_memory_is_bounded_by_one_layer(tmp_path):
    small_peak, layer_bytes, _ = peak_of(tmp_path, 2)
    big_peak, layer_bytes_big, model_bytes = peak_of(tmp_path, 12)
    assert layer_bytes == layer_bytes_big and model_bytes > 10 * layer_bytes
    assert big_peak is not None and small_peak is not None
    # 10 more layers cost less than two more layers' worth of peak ...
    assert big_peak < small_peak + 2 * layer_bytes, (small_peak, big_peak, layer_bytes)
    # ... and the whole 12-layer model never sat in memory.
    assert big_peak < model_bytes / 2, (big_peak, model_bytes)
