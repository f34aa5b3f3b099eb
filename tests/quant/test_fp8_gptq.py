"""FP8 weights on the per-channel e4m3 grid: the grid itself (the same one the writer and the
engine use), the scale search, GPTQ's error feedback on that grid, and the quantize option that
picks GPTQ (calibrated, the default), round-to-nearest with searched scales, or plain
round-to-nearest."""

from __future__ import annotations

import pytest
import torch

from localllm.quant import fp8
from localllm.quant.quantize import QuantizeError, QuantizeOptions
from localllm.quant.rtn import dequantize_fp8, quantize_fp8
from tests.quant.test_methods import correlated_inputs, output_error


def test_round_fp8_is_the_written_grid():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=gen) * torch.logspace(-3, 0, 64)[:, None]
    s = fp8.amax_scales(w)
    q, scales = quantize_fp8(w)
    assert torch.equal(s, scales)
    assert torch.equal(fp8.round_fp8(w, s), dequantize_fp8(q, scales))
    assert torch.equal(fp8.quantize_fp8_rows(w, s).float(), q.float())
    assert fp8.round_fp8(w, s).abs().amax(1).sub(w.abs().amax(1)).abs().max() < 1e-6  # amax maps to 448 exactly


def test_round_fp8_rounds_in_float32_and_saturates():
    # 1 + 2^-4 lies exactly halfway between e4m3 neighbours 1 and 1.125 (ties to even: 1);
    # 1 + 2^-4 + 2^-10 is above the midpoint and must round up. A bfloat16 detour loses 2^-10.
    x = torch.tensor([[1 + 2**-4, 1 + 2**-4 + 2**-10, 1000.0, -1000.0]])
    got = fp8.round_fp8(x, torch.ones(1, 1))
    assert got.tolist() == [[1.0, 1.125, 448.0, -448.0]]


def test_mse_scales_never_worse_than_amax_and_usually_better():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(128, 256, generator=gen)
    hdiag = torch.rand(256, generator=gen) + 0.1
    for weight in (None, hdiag):
        cols = torch.ones(256) if weight is None else weight

        def row_err(s):
            return ((fp8.round_fp8(w, s) - w).pow(2) * cols).sum(1)

        amax, searched = row_err(fp8.amax_scales(w)), row_err(fp8.mse_scales(w, weight))
        assert bool((searched <= amax).all())
        assert float(searched.sum()) < 0.97 * float(amax.sum())


def test_gptq_fp8_beats_rounding_on_its_inputs():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(96, 128, generator=gen) * 0.05
    x = correlated_inputs(2048, 128, seed=3)
    h = 2 * x.t() @ x / x.shape[0]
    q, scales = fp8.gptq_fp8(w, h)
    assert q.dtype == torch.float8_e4m3fn and scales.shape == (96, 1)
    assert torch.equal(scales, fp8.amax_scales(w))
    rtn = dequantize_fp8(*quantize_fp8(w))
    assert output_error(x, w, q.float() * scales) < 0.7 * output_error(x, w, rtn)


def test_gptq_fp8_with_uncorrelated_inputs_is_rounding():
    """A diagonal Hessian carries no error from one column to another: GPTQ must reduce to RTN."""
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(32, 200, generator=gen)
    h = torch.diag(torch.rand(200, generator=gen) + 0.5)
    q, scales = fp8.gptq_fp8(w, h, damp_percent=0.0)
    want_q, want_scales = quantize_fp8(w)
    assert torch.equal(scales, want_scales)
    assert torch.equal(q.float(), want_q.float())


def test_gptq_fp8_dead_columns_and_given_scales():
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(16, 64, generator=gen)
    x = correlated_inputs(512, 64, seed=6)
    x[:, 7] = 0  # a channel that never fires: its weights do not matter and are zeroed
    h = 2 * x.t() @ x / x.shape[0]
    scales = fp8.amax_scales(w) * 0.9
    q, got_scales = fp8.gptq_fp8(w, h, scales)
    assert torch.equal(got_scales, scales)
    assert bool((q.float()[:, 7] == 0).all())
    assert bool(torch.isfinite(q.float()).all()) and float(q.float().abs().max()) <= fp8.FP8_MAX


def test_fp8_algorithm_option():
    assert QuantizeOptions(method="fp8").calibrated  # GPTQ on the e4m3 grid by default
    assert not QuantizeOptions(method="fp8", fp8_algorithm="rtn").calibrated
    assert QuantizeOptions(method="gptq").calibrated and not QuantizeOptions(method="rtn").calibrated
    assert "GPTQ" in QuantizeOptions(method="fp8").scheme_name()
    assert "round-to-nearest" in QuantizeOptions(method="fp8", fp8_algorithm="rtn").scheme_name()
    assert not QuantizeOptions(method="fp8", fp8_algorithm="mse").calibrated
    assert "MSE" in QuantizeOptions(method="fp8", fp8_algorithm="mse").scheme_name()
    with pytest.raises(QuantizeError, match="unknown fp8 algorithm"):
        QuantizeOptions(method="fp8", fp8_algorithm="awq").validate()


def test_fp8_gptq_through_quantize_writes_the_grid_it_chose(tmp_path):
    """The default FP8 run calibrates (samples reported), writes compressed-tensors FP8 that loads
    back through the engine onto the e4m3 grid, and differs from round-to-nearest; with
    fp8_algorithm="rtn" the file holds exactly round-to-nearest's weights."""
    from localllm.quant.quantize import quantize_model
    from tests.quant.hub_fixtures import engine_model
    from tests.quant.tiny import random_tiny_model

    src = random_tiny_model(str(tmp_path / "src"), seed=9)
    original = dict(engine_model(src).named_parameters())
    common = dict(method="fp8", num_samples=4, seq_len=32, num_heldout=1, fp8_keep=0,
                  fp8_keep_activations=0)  # every linear FP8, activations too
    reports = {}
    models = {}
    for algorithm in ("gptq", "rtn", "mse"):
        out = tmp_path / algorithm
        reports[algorithm] = quantize_model(src, str(out), QuantizeOptions(fp8_algorithm=algorithm, **common))
        models[algorithm] = engine_model(str(out))
    assert reports["gptq"].calib_samples == 4 and reports["rtn"].calib_samples == 0 == reports["mse"].calib_samples
    mse_modules = dict(models["mse"].named_modules())
    assert reports["gptq"].ppl_original == reports["rtn"].ppl_original
    checked = differ = 0
    rtn_modules = dict(models["rtn"].named_modules())
    for name, module in models["gptq"].named_modules():
        if not hasattr(module, "dequantized_weight"):
            continue
        w = original[f"{name}.weight"]
        torch.testing.assert_close(rtn_modules[name].dequantized_weight(), dequantize_fp8(*quantize_fp8(w)),
                                   rtol=0, atol=1e-6)
        got = module.dequantized_weight()
        on_grid = fp8.round_fp8(got, module.weight_scale.view(-1, 1))
        torch.testing.assert_close(got, on_grid, rtol=0, atol=0)
        differ += int(not torch.equal(got, rtn_modules[name].dequantized_weight()))
        mse = mse_modules[name]
        want_scales = fp8.mse_scales(w)
        torch.testing.assert_close(mse.weight_scale.view(-1, 1), want_scales, rtol=0, atol=0)
        torch.testing.assert_close(mse.dequantized_weight(), fp8.round_fp8(w, want_scales), rtol=0, atol=1e-6)
        assert bool((mse.weight_scale.view(-1, 1) <= fp8.amax_scales(w)).all())
        checked += 1
    assert checked == 8 and differ == checked



def test_fp8_weight_only_option_writes_w8a16_that_loads_without_activation_rounding(tmp_path):
    """fp8_weight_only: the config names no input_activations, the engine's FP8 layers then leave
    activations in 16 bits, so the loaded model's logits equal its dequantized weights' exactly."""
    import json

    from localllm.layers.fp8_linear import FP8Linear
    from localllm.quant.quantize import quantize_model
    from tests.quant.hub_fixtures import engine_model
    from tests.quant.tiny import random_tiny_model

    src = random_tiny_model(str(tmp_path / "src"), seed=11)
    out = tmp_path / "w8a16"
    options = QuantizeOptions(method="fp8", num_samples=4, seq_len=32, num_heldout=1, fp8_weight_only=True)
    assert "weight-only" in options.scheme_name()
    quantize_model(src, str(out), options)
    group = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    assert group["input_activations"] is None and group["weights"]["type"] == "float"
    model = engine_model(str(out))
    layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
    assert layers and all(m.weight_only for m in layers)
    x = torch.randn(5, layers[0].in_features)
    torch.testing.assert_close(layers[0](x), x @ layers[0].dequantized_weight().t(), rtol=1e-5, atol=1e-5)
