"""Quantizing holds one decoder layer at a time: the peak memory it reports (growth of the
resident set on the CPU, see quant.memory) for a 10-layer model is about that of a 2-layer model
of the same width: the 8 extra layers add far less than their weights.

NOTE: each quantization runs in a fresh interpreter: in one process, heap memory freed by an
earlier run is reused without growing the resident set, which would hide a later run's peak."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.quant.tiny import random_tiny_model

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc")

WIDTH = dict(hidden=256, inter=512, heads=4, kv_heads=4)
SCRIPT = textwrap.dedent("""
    import json, sys
    from localllm.quant.quantize import QuantizeOptions, quantize_model
    # NOTE: a shard smaller than a layer, as the 512 MiB default is for an 8B model (0.9 GB a layer).
    options = QuantizeOptions(method="gptq", group_size=128, num_samples=4, seq_len=64, num_heldout=1,
                              max_shard_bytes=2 << 20)
    report = quantize_model(sys.argv[1], sys.argv[2], options)
    print(json.dumps([report.peak_memory, report.largest_layer, report.memory_original_16bit * 2]))
""")


def peak_of(tmp_path, layers: int) -> tuple[int, int, int]:
    src = random_tiny_model(str(tmp_path / f"src{layers}"), seed=layers, layers=layers, **WIDTH)
    done = subprocess.run([sys.executable, "-c", SCRIPT, src, str(tmp_path / f"out{layers}")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


def test_peak_memory_is_bounded_by_one_layer(tmp_path):
    small_peak, layer_bytes, _ = peak_of(tmp_path, 2)
    big_peak, layer_bytes_big, model_bytes = peak_of(tmp_path, 10)
    assert layer_bytes == layer_bytes_big and model_bytes > 9 * layer_bytes
    assert small_peak and big_peak  # measured, in fresh processes
    # 8 more layers (21 MB of float32 weights) cost less than two layers' worth of peak: the peak
    # is a fixed part (interpreter, torch's first allocations, activations) plus about one layer.
    extra_layers_bytes = model_bytes * 8 // 10
    assert big_peak - small_peak < 2 * layer_bytes < extra_layers_bytes / 3, (small_peak, big_peak, layer_bytes)
