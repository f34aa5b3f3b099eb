"""The memory planner (localllm.quant.fit): byte counts against known models, the choice of
precision, shorter contexts, and the one-line summary."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from localllm.hub.aliases import load_aliases
from localllm.quant.fit import (
    DeviceMemory,
    ModelShape,
    kv_bytes_per_token,
    overhead_bytes,
    plan_fit,
    probe_memory,
    ram_bytes,
    runnable_precisions,
    weight_bytes,
)

LLAMA3_8B = load_aliases()["llama3-8b"].config
GB = 10**9


def test_the_issue_example():
    plan = plan_fit(LLAMA3_8B | {"max_position_embeddings": 131072}, 12 * GB, 16384,
                    {"bf16", "fp8", "awq", "gptq"}, "cuda", name="llama3-8b")
    assert plan.summary() == "llama3-8b: AWQ int4, 5.7 GB weights + 2.1 GB KV for 16k tokens on 12 GB"
    assert plan.precision == "awq" and plan.context_len == 16384
    assert [o.precision for o in plan.options] == ["bf16", "fp8", "awq", "gptq"]
    assert [o.fits_target for o in plan.options] == [False, False, True, True]


def test_alias_configs_match_the_model_cards():
    """The table's config numbers and the parameter counts model cards state are independent."""
    for alias in load_aliases().values():
        counted = ModelShape.from_config(alias.config).num_parameters
        assert abs(counted / alias.parameters - 1) < 0.02, (alias.name, counted, alias.parameters)


def test_byte_counts():
    shape = ModelShape.from_config(LLAMA3_8B)
    assert shape.num_parameters == 8_030_261_248  # Meta-Llama-3-8B's safetensors hold exactly this many
    assert weight_bytes(shape, "bf16") == 2 * shape.num_parameters
    assert weight_bytes(shape, "bf16", "cpu") == 4 * shape.num_parameters  # float32 on the CPU
    assert weight_bytes(shape, "gguf", "cuda") == weight_bytes(shape, "bf16", "cuda")  # dequantized on a GPU
    assert weight_bytes(shape, "fp8") < weight_bytes(shape, "bf16") * 0.6
    assert weight_bytes(shape, "awq") == weight_bytes(shape, "gptq") < weight_bytes(shape, "fp8")
    assert kv_bytes_per_token(shape) == 2 * 32 * 8 * 128 * 2  # 128 KiB a token
    with pytest.raises(ValueError, match="unknown precision 'int3'"):
        weight_bytes(shape, "int3")


def test_fp8_quantized_here_counts_the_linears_it_keeps_in_16_bits():
    shape = ModelShape.from_config(LLAMA3_8B)
    assert shape.layer_linear_parameters() == [4096 * 6144, 4096 * 4096, 2 * 4096 * 14336, 4096 * 14336]
    pulled = weight_bytes(shape, "fp8")
    here = weight_bytes(shape, "fp8", quantized_here=True)
    # 1/8 of the 128 fused decoder linears stay 16-bit; the planner counts the largest 16 (the
    # gate_up of 16 layers), one more byte a weight.
    assert here - pulled == 16 * 2 * 4096 * 14336
    assert weight_bytes(shape, "awq", quantized_here=True) == weight_bytes(shape, "awq")
    # On a card where a pulled FP8 file just fits 32k tokens, one made here fits 14k fewer.
    config = LLAMA3_8B | {"max_position_embeddings": 131072}
    free = int((pulled + overhead_bytes(shape) + 32768 * kv_bytes_per_token(shape)) / 0.9) + 1
    from_hub = plan_fit(config, free, 32768, {"fp8"}, "cuda")
    made_here = plan_fit(config, free, 32768, {"fp8"}, "cuda", quantized_here={"fp8"})
    assert from_hub.context_len == 32768 and from_hub.weight_bytes == pulled
    assert made_here.weight_bytes == here and made_here.context_len == 32768 - 14 * 1024


def test_quality_first_on_a_gpu_and_gguf_first_on_the_cpu():
    big = plan_fit(LLAMA3_8B, 80 * GB, 8192, {"bf16", "fp8", "awq"}, "cuda")
    assert big.precision == "bf16"
    cpu = plan_fit(LLAMA3_8B, 64 * GB, 8192, {"bf16", "gguf"}, "cpu", name="llama3-8b")
    assert cpu.precision == "gguf"
    assert cpu.summary().startswith("llama3-8b: GGUF Q4_K_M, ") and cpu.summary().endswith("on 64 GB RAM")
    assert plan_fit(LLAMA3_8B, 64 * GB, 8192, {"bf16"}, "cpu").precision == "bf16"


def test_a_shorter_context_when_nothing_fits_the_target():
    plan = plan_fit(LLAMA3_8B, 9 * GB, 8192, {"awq"}, "cuda", name="llama3-8b")
    assert plan.precision == "awq"
    assert 2048 <= plan.context_len < 8192 and plan.context_len % 1024 == 0
    assert plan.summary().endswith("on 9 GB (8k asked)")
    used = plan.weight_bytes + plan.kv_bytes + plan.overhead_bytes
    assert used <= 0.9 * 9 * GB


def test_nothing_fits():
    plan = plan_fit(LLAMA3_8B, 4 * GB, 8192, {"bf16", "awq"}, "cuda", name="llama3-8b")
    assert not plan.fits and plan.precision is None
    assert plan.summary() == (
        "llama3-8b: does not fit on 4 GB: the smallest, AWQ int4, needs 5.7 GB for its weights alone"
    )


def test_target_is_capped_at_the_model_context():
    plan = plan_fit(LLAMA3_8B, 80 * GB, 1_000_000, {"bf16"}, "cuda")
    assert plan.target_context == plan.context_len == 8192


def test_config_objects_and_wrappers():
    obj = SimpleNamespace(**LLAMA3_8B)
    assert ModelShape.from_config(obj) == ModelShape.from_config(LLAMA3_8B)
    assert ModelShape.from_config({"text_config": LLAMA3_8B}) == ModelShape.from_config(LLAMA3_8B)
    with pytest.raises(ValueError, match="config lacks"):
        ModelShape.from_config({"hidden_size": 8})
    with pytest.raises(ValueError, match="unknown precision"):
        plan_fit(LLAMA3_8B, GB, 1024, {"int2"})


def test_this_machine():
    total, available = ram_bytes()
    assert total > 0 and 0 < available <= total
    cpu = probe_memory("cpu")
    assert cpu.kind == "cpu" and cpu.free_bytes == pytest.approx(available, rel=0.2)
    assert runnable_precisions(cpu) == {"bf16", "gguf"}
    gpu = DeviceMemory("cuda:0", "GPU", 16 * GB, 12 * GB, supports_fp8=False)
    assert "fp8" not in runnable_precisions(gpu) and "awq" in runnable_precisions(gpu)
    assert "fp8" in runnable_precisions(DeviceMemory("cuda:0", "H100", GB, GB, supports_fp8=True))
