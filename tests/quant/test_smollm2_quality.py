"""The quality claims on a real model, SmolLM2-135M-Instruct (its GGUF's weights, dequantized, are
the "original"): AWQ and GPTQ beat round-to-nearest at the same bits and group size on held-out
text; FP8 with GPTQ beats FP8 rounding (its 1% target is not reachable on this model: README).
Opt-in (LOCALLLM_QUANT_SMOLLM2=1): calibrating 30 layers takes minutes on a 2-core CPU, too long
for every CI run; the tiny-model tests cover the same claims."""

from __future__ import annotations

import os

import pytest

from localllm.quant.quantize import QuantizeOptions, quantize_model

pytestmark = pytest.mark.skipif(os.environ.get("LOCALLLM_QUANT_SMOLLM2") != "1",
                                reason="opt-in: LOCALLLM_QUANT_SMOLLM2=1 (several minutes)")

SETTINGS = dict(group_size=64, num_samples=16, seq_len=512, num_heldout=8)  # 576 = 9 x 64


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


@pytest.mark.xfail(reason="not reachable on SmolLM2-135M: per-token e4m3 activations alone cost +0.91%; "
                          "GPTQ FP8 measures +1.52% (README, Quantization on the CPU)", strict=False)
def test_fp8_within_one_percent_on_smollm2(run):
    report = run("fp8", method="fp8")
    assert abs(report.ppl_quantized / report.ppl_original - 1) < 0.01


def test_fp8_gptq_beats_fp8_rounding_on_smollm2(run):
    """What GPTQ on the e4m3 grid buys: measured +3.16% -> +1.52%; asserted with room for the
    ~0.2-point noise of per-token rounding."""
    gptq, rtn = run("fp8", method="fp8"), run("fp8-rtn", method="fp8", fp8_algorithm="rtn")
    assert gptq.calib_samples == SETTINGS["num_samples"] and rtn.calib_samples == 0
    assert gptq.ppl_quantized / gptq.ppl_original - 1 < 0.02
    assert gptq.ppl_quantized < rtn.ppl_quantized * 0.99
