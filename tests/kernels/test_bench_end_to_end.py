"""The GPU benchmark's end-to-end engine section (benchmarks/bench_gpu.py, `engine_figures`)
runs through on the CPU with a tiny random model and toy workloads, so the GPU session that
measures it does not die on a typo. The figures mean nothing here; the keys and their sanity do."""

from __future__ import annotations

import dataclasses

import pytest

from tests.engine.conftest import tiny_configs
from tests.kernels.conftest import load_benchmark


def test_engine_figures_at_toy_sizes():
    from transformers import LlamaForCausalLM

    bench = load_benchmark("bench_gpu")
    config = tiny_configs()["llama"]
    config.max_position_embeddings = 512
    model = LlamaForCausalLM(config).eval()
    engine = bench.build_engine(config, model, max_len=512, max_num_seqs=16, device="cpu")
    sizes = bench.EngineRunSizes(ttft_prompt=300, decode_prompt=16, decode_tokens=12, num_requests=12,
                                 prompt_len=20, output_len=6)
    out = bench.engine_figures(engine, config.vocab_size, weight_bytes=10**6, copy_gbs=1.0, sizes=sizes)
    assert out["async_scheduling"] is False  # the CPU's default; the other run had it on
    assert out["batch1_decode_tok_s"] > 0 and out["batch1_decode_tok_s_other_scheduling"] > 0
    # The floor counts the weights and the cache bytes of the mean context: 16 + 12 / 2 positions
    # of 2 layers x K and V x 2 heads x 16 dims in bfloat16 (the bench's dtype).
    kv = 22 * 2 * 2 * 2 * 16 * 2
    assert out["batch1_floor_tok_s"] == round(1e9 / (10**6 + kv), 1)
    throughput = out["throughput_256x200_180"]
    assert throughput["output_tok_s"] / throughput["total_tok_s"] == pytest.approx(6 / 26, rel=1e-3)
    profiles = out["batch1_decode_profile"]
    assert set(profiles) == {"sync", "async"}
    for profile in profiles.values():  # the CPU's ops here; kernels and device busy time on a GPU
        assert profile["wall_ms_per_step"] > 0 and profile["top"]
        assert sum(t["share"] for t in profile["top"]) <= 1.001
        assert any("linear" in t["name"] or "addmm" in t["name"] or "mm" in t["name"] for t in profile["top"])
    assert not engine.has_unfinished_requests()
    assert dataclasses.asdict(bench.EngineRunSizes())["ttft_prompt"] == 8192
