"""Format round trips: what our writers produce unpacks, through independent implementations
(tests/quant/unpack_reference.py for AutoAWQ and GPTQ, the compressed-tensors package for its
formats), to the weights we meant; and files packed by those implementations read back through
our readers to the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from localllm.quant import packing
from localllm.quant.formats import awq, compressed_tensors, gptq
from localllm.quant.rtn import GroupQuant, quantize_fp8, dequantize_fp8
from tests.quant import unpack_reference as ref


def random_group_quant(n: int, k: int, bits: int, group: int, seed: int, g_idx: bool = False,
                       min_zero: int = 0) -> GroupQuant:
    gen = torch.Generator().manual_seed(seed)
    maxq = (1 << bits) - 1
    q = torch.randint(0, maxq + 1, (n, k), generator=gen, dtype=torch.int32)
    zeros = torch.randint(min_zero, maxq + 1, (n, k // group), generator=gen, dtype=torch.int32)
    scales = (torch.rand(n, k // group, generator=gen) * 0.05 + 1e-3).half().float()
    index = None
    if g_idx:
        index = (torch.randperm(k, generator=gen) // group).to(torch.int32)
    return GroupQuant(q, scales, zeros, bits, group, index)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_packing_round_trips_and_rejects_out_of_range(bits):
    gen = torch.Generator().manual_seed(bits)
    values = torch.randint(0, 1 << bits, (6, 64), generator=gen)
    assert torch.equal(packing.unpack_cols(packing.pack_cols(values, bits), bits), values.int())
    assert torch.equal(packing.unpack_rows(packing.pack_rows(values.t(), bits), bits), values.t().int())
    with pytest.raises(ValueError, match="must lie in"):
        packing.pack_cols(values + (1 << bits), bits)
    with pytest.raises(ValueError, match="int32 words"):
        packing.pack_cols(values, 3)


@pytest.mark.parametrize("n,k,group", [(16, 64, 32), (48, 256, 128), (8, 96, 96)])
def test_awq_writer_unpacks_with_autoawq_rules(n, k, group):
    gq = random_group_quant(n, k, 4, group, seed=n + k)
    tensors = awq.write("m", gq)
    assert tensors["m.qweight"].dtype == torch.int32 and tuple(tensors["m.qweight"].shape) == (k, n // 8)
    assert tuple(tensors["m.qzeros"].shape) == (k // group, n // 8)
    assert tensors["m.scales"].dtype == torch.float16 and tuple(tensors["m.scales"].shape) == (k // group, n)
    assert np.array_equal(ref.awq_unpack(tensors["m.qweight"]), gq.q.t().numpy())
    assert np.array_equal(ref.awq_unpack(tensors["m.qzeros"]), gq.zeros.t().numpy())
    w = ref.dequant_awq(tensors["m.qweight"], tensors["m.qzeros"], tensors["m.scales"], group)
    np.testing.assert_allclose(w, gq.dequantize().numpy(), rtol=0, atol=1e-6)


def test_awq_reader_takes_autoawq_packed_tensors():
    gq = random_group_quant(32, 128, 4, 64, seed=3)
    qweight = ref.awq_pack(gq.q.t().numpy())
    qzeros = ref.awq_pack(gq.zeros.t().numpy())
    runtime = awq.to_runtime(qweight, qzeros, gq.scales.t().half(), 64, torch.float32)
    torch.testing.assert_close(runtime.dequantize(), gq.dequantize(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [4, 8, 2])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_writer_unpacks_with_gptq_rules(bits, act_order):
    gq = random_group_quant(32, 128, bits, 32, seed=bits, g_idx=act_order, min_zero=1)
    tensors = gptq.write("m", gq)
    per = 32 // bits
    assert tuple(tensors["m.qweight"].shape) == (128 // per, 32)
    assert tuple(tensors["m.qzeros"].shape) == (4, 32 // per)
    assert tensors["m.g_idx"].dtype == torch.int32
    assert np.array_equal(ref.gptq_unpack_qweight(tensors["m.qweight"], bits), gq.q.t().numpy())
    assert np.array_equal(ref.gptq_unpack_qzeros(tensors["m.qzeros"], bits), gq.zeros.t().numpy())
    w = ref.dequant_gptq(tensors["m.qweight"], tensors["m.qzeros"], tensors["m.scales"], tensors["m.g_idx"], bits)
    np.testing.assert_allclose(w, gq.dequantize().numpy(), rtol=0, atol=1e-6)


def test_gptq_writer_refuses_a_zero_point_v1_cannot_hold():
    gq = random_group_quant(8, 64, 4, 32, seed=0)
    gq.zeros[0, 0] = 0
    with pytest.raises(ValueError, match="zero point of 0"):
        gptq.write("m", gq)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_reader_takes_autogptq_packed_tensors(act_order):
    gq = random_group_quant(24, 128, 4, 32, seed=7, g_idx=act_order, min_zero=1)
    qweight, qzeros = ref.gptq_pack(gq.q.t().numpy(), gq.zeros.t().numpy(), 4)
    runtime = gptq.to_runtime(qweight, qzeros, gq.scales.t().half(), gq.group_index().int(), 4, 32, torch.float32)
    assert (runtime.perm is not None) == act_order
    torch.testing.assert_close(runtime.dequantize(), gq.dequantize(), rtol=0, atol=1e-6)


def test_gptq_reader_refuses_uneven_g_idx():
    gq = random_group_quant(8, 64, 4, 32, seed=1, min_zero=1)
    tensors = gptq.write("m", gq)
    g_idx = torch.zeros(64, dtype=torch.int32)  # every row in group 0
    with pytest.raises(ValueError, match="exactly 32 rows"):
        gptq.to_runtime(tensors["m.qweight"], tensors["m.qzeros"], tensors["m.scales"], g_idx, 4, 32, torch.float32)


# ------------------------------------------------------------------ compressed-tensors

ct = pytest.importorskip("compressed_tensors")


@pytest.mark.parametrize("weight_only", [False, True])
def test_fp8_writer_decompresses_with_compressed_tensors(weight_only):
    from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig

    from localllm.quant.config import _compressed_tensors

    raw = compressed_tensors.fp8_config(["lm_head"], weight_only=weight_only)
    config = QuantizationConfig.model_validate(raw)
    scheme = config.config_groups["group_0"]
    assert config.format == "float-quantized"
    assert (scheme.input_activations is None) if weight_only else scheme.input_activations.dynamic
    assert compressed_tensors.FP8_DYNAMIC_SCHEME["input_activations"] is not None  # the default is not mutated
    ours = _compressed_tensors(raw, "test")
    assert ours.fp8_weight_only == weight_only and not ours.static_input_scale
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(0)) * 0.1
    q, scales = quantize_fp8(w)
    tensors = compressed_tensors.write_fp8("m", q, scales)
    local = {"weight": tensors["m.weight"], "weight_scale": tensors["m.weight_scale"]}
    theirs = FloatQuantizationCompressor.decompress(local, scheme)["weight"]
    torch.testing.assert_close(theirs.float(), dequantize_fp8(q, scales), rtol=0, atol=0)
    assert (theirs.float() - w).abs().max() < 0.07 * w.abs().max()  # e4m3: 3 mantissa bits


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("strategy", ["group", "channel"])
def test_pack_quantized_reader_matches_compressed_tensors(sym, strategy):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    n, k, group = 32, 128, 32
    group_size = group if strategy == "group" else None
    args = QuantizationArgs(num_bits=4, type="int", symmetric=sym, strategy=strategy, group_size=group_size)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(1))
    g = w.view(n, -1, group if strategy == "group" else k)
    if sym:
        scale = g.abs().amax(-1) / 7.5
        state = {"weight": w, "weight_scale": scale}
    else:
        lo, hi = g.amin(-1), g.amax(-1)
        scale = (hi - lo) / 15
        zero = (-8 - torch.round(lo / scale)).clamp(-8, 7).to(torch.int8)
        state = {"weight": w, "weight_scale": scale, "weight_zero_point": zero}
    packed = PackedQuantizationCompressor.compress(state, scheme)
    theirs = PackedQuantizationCompressor.decompress(packed, scheme)["weight"]
    runtime = compressed_tensors.wna16_to_runtime(packed["weight_packed"], packed["weight_scale"],
                                                  packed.get("weight_zero_point"), 4, group_size or k, torch.float32)
    torch.testing.assert_close(runtime.dequantize(), theirs.float(), rtol=0, atol=1e-6)
