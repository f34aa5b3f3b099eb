"""The quality claims on a real model, SmolLM2-135M-Instruct (its GGUF's weights, dequantized, are
the "original"): AWQ and GPTQ beat round-to-nearest at the same bits and group size on held-out
text; FP8 with GPTQ beats FP8 rounding; FP8 by default (the most sensitive 1/8 of the linears kept
in 16 bits, the next 1/4 with 16-bit activations) stays within 1% and beats FP8 everywhere.
Opt-in (LOCALLLM_QUANT_SMOLLM2=1): calibrating 30 layers takes minutes on a 2-core CPU, too long
for every CI run; the tiny-model tests cover the same claims."""

from __future__ import annotations

import os

import pytest

from localllm.quant.quantize import QuantizeOptions, quantize_model

pytestmark = pytest.mark.skipif(os.environ.get("LOCALLLM_QUANT_SMOLLM2") != "1",
                                reason="opt-in: LOCALLLM_QUANT_SMOLLM2=1 (several minutes)")

SETTINGS = dict(group_size=64, num_samples=16, seq_len=512)  # 576 = 9 x 64; the default 24 held-out windows


@pytest.fixture(scope="module")
def run(smollm2_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2")
    cache = {}

    def quantize(name: str, **options):
        if name not in cache:
            cache[name] = quantize_model(smollm2_gguf, str(out / name), QuantizeOptions(**SETTINGS, **options))
            print("\n".join(cache[name].lines()))
        return cache[name]

    return quantize


def test_awq_beats_rtn_on_smollm2(run):
    assert run("awq", method="awq").ppl_quantized < run("rtn-asym", method="rtn", sym=False).ppl_quantized


def test_gptq_beats_rtn_on_smollm2(run):
    assert run("gptq", method="gptq").ppl_quantized < run("rtn-sym", method="rtn", sym=True).ppl_quantized


def test_fp8_within_one_percent_on_smollm2(run):
    """Measured +0.53% and +0.77% (16 and 32 calibration windows) on the 24 held-out windows
    (README, with standard errors); every linear W8A8: +1.28%."""
    report = run("fp8", method="fp8")
    assert abs(report.ppl_quantized / report.ppl_original - 1) < 0.01


def test_fp8_default_keeps_the_most_sensitive_linears_and_gains(run):
    """15 of 120 linears 16-bit, under a fifth of the linear weight bytes (measured 18.9%), 30 more
    with 16-bit activations (FP8 weights: no more bytes), and better than every linear in FP8."""
    report = run("fp8", method="fp8")
    every = run("fp8-all", method="fp8", fp8_keep=0, fp8_keep_activations=0)
    assert report.linears_16bit == 15 and report.linears_total == 120 and every.linears_16bit == 0
    assert report.linears_16bit_activations == 30 and every.linears_16bit_activations == 0
    assert report.kept[:2] == ["model.layers.29.mlp.down_proj", "model.layers.29.mlp.gate_up_proj"]
    linear_weights = 30 * (576 * 960 + 576 * 576 + 576 * 3072 + 1536 * 576)  # qkv, o, gate_up, down
    assert report.bytes_16bit < 0.2 * 2 * linear_weights
    assert report.ppl_quantized < every.ppl_quantized


def test_fp8_gptq_beats_fp8_rounding_on_smollm2(run):
    """What GPTQ on the e4m3 grid buys, every linear in FP8. Per-token rounding makes these figures
    move with the order of float operations: measured +3.16% -> +1.32% with the pure-torch
    kernels, +2.49% -> +1.78% with the C CPU kernels (LOCALLLM_KERNELS=auto, the engine's
    default since they came), so only the order is asserted."""
    gptq = run("fp8-all", method="fp8", fp8_keep=0, fp8_keep_activations=0)
    rtn = run("fp8-rtn", method="fp8", fp8_algorithm="rtn", fp8_keep=0, fp8_keep_activations=0)
    assert gptq.calib_samples == SETTINGS["num_samples"] and rtn.calib_samples == 0
    assert gptq.ppl_quantized / gptq.ppl_original - 1 < 0.02
    assert gptq.ppl_quantized < rtn.ppl_quantized
