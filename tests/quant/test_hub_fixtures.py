"""Checkpoints in each Hub format (AutoAWQ gemm, GPTQ v1 with and without act-order,
compressed-tensors W4A16 and FP8), packed by independent code (hub_fixtures.py), load through the
engine's loader and give the logits of their dequantized float twin: exactly (up to float32
summation order) on the reference kernels; within bf16 rounding on the CPU's int4 kernel; within
FP8 activation rounding for W8A8."""

from __future__ import annotations

import pytest
import torch

from localllm.errors import ModelLoadError
from localllm.kernels import ops
from tests.quant.hub_fixtures import build_fixture, engine_logits, engine_model, max_rel_err
from tests.quant.tiny import random_tiny_model

PROMPT = [5, 17, 99, 3, 250, 42, 42, 7, 128, 64, 1, 200, 33, 90, 11, 250, 8, 60, 61, 62]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return random_tiny_model(str(tmp_path_factory.mktemp("llama")), seed=1)


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory) -> str:
    return random_tiny_model(str(tmp_path_factory.mktemp("qwen2")), seed=2, arch="qwen2")


CASES = {
    "awq": dict(fmt="awq"),
    "gptq": dict(fmt="gptq"),
    "gptq-act-order": dict(fmt="gptq", act_order=True),
    "gptq-asym": dict(fmt="gptq", sym=False),
    "ct-w4a16": dict(fmt="ct-w4a16"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_int4_fixture_matches_its_dequantized_twin(case, tiny_llama, tmp_path):
    pytest.importorskip("compressed_tensors")
    build_fixture(tiny_llama, str(tmp_path / "q"), str(tmp_path / "twin"), **CASES[case])
    with ops.use_backend("reference"):
        twin = engine_logits(str(tmp_path / "twin"), PROMPT)
        quant = engine_logits(str(tmp_path / "q"), PROMPT)
    torch.testing.assert_close(quant, twin, rtol=1e-4, atol=1e-4)
    # The default CPU path (torch's int4 kernel, bfloat16 activations) stays within bf16 rounding.
    assert max_rel_err(engine_logits(str(tmp_path / "q"), PROMPT), twin) < 3e-2
    float_logits = engine_logits(tiny_llama, PROMPT)
    assert max_rel_err(quant, float_logits) > 1e-3  # the twin is really quantized: a test that can fail


def test_awq_with_qkv_bias_qwen2(tiny_qwen2, tmp_path):
    build_fixture(tiny_qwen2, str(tmp_path / "q"), str(tmp_path / "twin"), fmt="awq")
    with ops.use_backend("reference"):
        torch.testing.assert_close(engine_logits(str(tmp_path / "q"), PROMPT),
                                   engine_logits(str(tmp_path / "twin"), PROMPT), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", [{}, {"per_tensor": True}, {"static_input": True}, {"weight_only": True}])
def test_fp8_fixture_matches_its_twin_up_to_activation_rounding(variant, tiny_llama, tmp_path):
    pytest.importorskip("compressed_tensors")
    build_fixture(tiny_llama, str(tmp_path / "q"), str(tmp_path / "twin"), fmt="ct-fp8", **variant)
    from localllm.layers.fp8_linear import FP8Linear

    twin_model, quant_model = engine_model(str(tmp_path / "twin")), engine_model(str(tmp_path / "q"))
    # The weights the engine multiplies by are the twin's exactly ...
    twin_params = dict(twin_model.named_parameters())
    layers = [(name, m) for name, m in quant_model.named_modules() if isinstance(m, FP8Linear)]
    assert len(layers) == 4 * 2
    for name, module in layers:
        torch.testing.assert_close(module.dequantized_weight(), twin_params[f"{name}.weight"], rtol=0, atol=0)
    if variant.get("static_input"):
        assert float(layers[0][1].input_scale) == pytest.approx(0.02)
    # ... and the logits differ only by rounding activations to e4m3 (3 mantissa bits) at run time,
    # which a weight-only file (no input_activations) leaves in 16 bits.
    twin = engine_logits("", PROMPT, twin_model)
    quant = engine_logits("", PROMPT, quant_model)
    assert all(m.weight_only == bool(variant.get("weight_only")) for _, m in layers)
    if variant.get("weight_only"):
        torch.testing.assert_close(quant, twin, rtol=1e-4, atol=1e-4)
        return
    assert float((quant - twin).norm() / twin.norm()) > 1e-3
    assert float((quant - twin).norm() / twin.norm()) < 0.1
    assert (quant.argmax(-1) == twin.argmax(-1)).float().mean() >= 0.75


def test_unsupported_quantization_config_is_one_clear_error(tiny_llama, tmp_path):
    import json
    import shutil

    target = tmp_path / "bnb"
    shutil.copytree(tiny_llama, target)
    config = json.loads((target / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (target / "config.json").write_text(json.dumps(config))
    from localllm.models.loader import load_checkpoint

    with pytest.raises(ModelLoadError, match="quantization method 'bitsandbytes' is not supported"):
        load_checkpoint(str(target))
