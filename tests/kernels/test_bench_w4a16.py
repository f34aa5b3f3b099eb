"""The GPU benchmark section `w4a16` (benchmarks/bench_w4a16.py) runs end to end at toy shapes on
the CPU (Triton under the interpreter, a plain timer), so the GPU session that measures it does not
die on a typo. Its figures here mean nothing; only that they are produced and sane."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.conftest import load_benchmark, requires_triton, wall_timer

pytest.importorskip("triton")
pytestmark = requires_triton


def test_kernel_section_at_toy_shapes():
    bench = load_benchmark("bench_w4a16")
    out = bench.kernel_figures(wall_timer, copy_gbs=10.0, device="cpu", dtype=torch.float32,
                               shapes={"toy": (256, 64)}, batches=(1, 4))
    rows = out["toy K256 N64"]
    assert set(rows) == {"batch1", "batch4"}
    for row in rows.values():
        assert row["w4a16_ms"] > 0 and row["fp16_ms"] > 0
        assert row["rel_err_vs_dense"] < 1e-4  # the kernel computes what the dense matmul does
        assert row["fp8_w8a16_ms"] > 0 and row["fp8_w8a8_ms"] == "no FP8 on this device"
    assert out["min_speedup_batch_1_16"] is not None


def test_awq_decode_section_at_toy_shapes():
    bench = load_benchmark("bench_w4a16")
    config = bench.awq_llama_config(1024, layers=2, hidden=256, inter=512, vocab=512, heads=4, kv_heads=2)
    out = bench.decode_figures(copy_gbs=10.0, device="cpu", dtype=torch.float32, config=config, output_len=5)
    assert out["batch1_decode_tok_s"] > 0 and 0 < out["batch1_fraction_of_floor"]
    assert out["weight_bytes_per_token"] > 0
