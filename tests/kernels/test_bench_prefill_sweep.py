"""The GPU benchmark's prefill launch-config sweep (benchmarks/bench_gpu.py, section
`prefill_sweep`) runs end to end at toy shapes on the CPU (Triton under the interpreter, a plain
timer), so the GPU session that measures it does not die on a typo. Its figures here mean nothing;
only that every config is either timed or recorded with why, and the best is a timed one."""

from __future__ import annotations

import torch

from tests.kernels.conftest import load_benchmark, requires_triton, wall_timer

pytestmark = requires_triton


def test_prefill_sweep_at_toy_shapes():
    bench = load_benchmark("bench_gpu")
    configs = [(32, 32, 32, 4, 3), (32, 32, 16, 4, 2), (16, 16, 16, 4, 3), (32, 32, 8, 4, 3)]
    out = bench.prefill_sweep(wall_timer, device="cpu", dtype=torch.float32, shapes=((1, 48), (3, 20)),
                              heads=(4, 2, 32), configs=configs)
    assert set(out) == {"1x48", "3x20"}
    for shape in out.values():
        timed = {k: v for k, v in shape.items() if isinstance(v, float)}
        assert set(timed) == {"m32_n32_diag32_w4_s3", "m32_n32_diag16_w4_s2", "m16_n16_diag16_w4_s3"}
        assert all(v > 0 for v in timed.values())
        assert shape["m32_n32_diag8_w4_s3"].startswith("ValueError: block_n_diag 8")  # refused, not fatal
        assert shape["best"] in timed


def test_sweep_starts_from_the_default_config():
    """The sweep's reference output is the engine's default launch config at D=128 bf16."""
    from localllm.kernels.triton.attention_prefill import prefill_config

    first = load_benchmark("bench_gpu").PREFILL_SWEEP[0]
    block_m, block_n, num_warps, num_stages = prefill_config(128, torch.bfloat16)
    assert first == (block_m, block_n, block_n, num_warps, num_stages)
