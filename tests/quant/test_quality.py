"""Quality on a tiny model trained for a moment on the built-in corpus (with the activation
outlier channels trained LLMs have, see tests/quant/tiny.py), measured on held-out text the
methods never saw: AWQ beats round-to-nearest with the same asymmetric int4 grid and group size,
GPTQ beats round-to-nearest with the same symmetric grid, FP8 stays within 1% of the original
perplexity; each also agrees with the original's top-1 token at least as often as RTN does.

Perplexities come from the quantize report: the original through the float layers, the
quantized model by loading the written directory through the engine."""

from __future__ import annotations

import pytest

from localllm.quant.quantize import QuantizeOptions, quantize_model
from tests.quant.tiny import trained_tiny_model

GROUP = 64
CALIB = dict(num_samples=16, seq_len=128, num_heldout=8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    return trained_tiny_model(str(tmp_path_factory.mktemp("trained")))


@pytest.fixture(scope="module")
def reports(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized")
    cache = {}

    def run(name: str, **options):
        if name not in cache:
            cache[name] = quantize_model(trained, str(out / name), QuantizeOptions(group_size=GROUP, **CALIB, **options))
        return cache[name]

    return run


def test_awq_beats_round_to_nearest(reports):
    rtn, awq = reports("rtn-asym", method="rtn", sym=False), reports("awq", method="awq")
    assert rtn.ppl_original == awq.ppl_original
    assert awq.ppl_quantized < rtn.ppl_quantized, (awq.ppl_quantized, rtn.ppl_quantized)
    assert awq.top1_agreement >= rtn.top1_agreement


def test_gptq_beats_round_to_nearest(reports):
    rtn, gptq = reports("rtn-sym", method="rtn", sym=True), reports("gptq", method="gptq")
    assert gptq.ppl_quantized < rtn.ppl_quantized, (gptq.ppl_quantized, rtn.ppl_quantized)
    assert gptq.top1_agreement >= rtn.top1_agreement


def test_fp8_stays_within_one_percent(reports):
    fp8 = reports("fp8", method="fp8")
    assert abs(fp8.ppl_quantized / fp8.ppl_original - 1) < 0.01
    assert fp8.top1_agreement > 0.95


def test_rtn_really_loses_something(reports):
    """The comparisons above are not between equals: plain rounding costs perplexity here."""
    rtn = reports("rtn-asym", method="rtn", sym=False)
    assert rtn.ppl_quantized > rtn.ppl_original * 1.002
