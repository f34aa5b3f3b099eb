"""FP8 with the most sensitive linears kept in 16 bits (QuantizeOptions.fp8_keep): the Fisher
ranking finds a linear made sensitive on purpose, the kept linears are written dense and named in
the config's ignore list as compressed-tensors names them, the engine loads them dense with the
same logits as a twin built by hand, and bad values fail before anything is written."""

from __future__ import annotations

import json
import os

import pytest
import torch

from localllm.quant.export import ignored_modules, quantization_config
from localllm.quant.quantize import DEFAULT_FP8_KEEP_FRACTION, QuantizeError, QuantizeOptions, prepare, quantize_model
from tests.quant.tiny import trained_tiny_model

# rtn: deterministic; no linear with 16-bit activations unless a test asks (test_fp8_keep_activations.py)
FAST = dict(method="fp8", fp8_algorithm="rtn", num_samples=4, seq_len=64, num_heldout=2, fp8_keep_activations=0)
TARGET_LAYER = 1
TARGET = f"model.layers.{TARGET_LAYER}.mlp.down_proj"
OTHER_DOWN = "model.layers.0.mlp.down_proj"  # an ordinary FP8 linear beside it


def _outlier_twin(src: str, dst: str, alpha: float = 1e7) -> str:
    """The same function as src, with one intermediate channel of layer TARGET_LAYER scaled by alpha in up_proj
    and by 1/alpha in down_proj: down_proj's per-token e4m3 input scale is then set by that one
    channel and every other channel falls below e4m3's smallest subnormal (rounds to zero)."""
    from transformers import AutoModelForCausalLM

    from tests.quant.tiny import save_model

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    mlp = model.model.layers[TARGET_LAYER].mlp
    with torch.no_grad():
        mlp.up_proj.weight[3] *= alpha
        mlp.down_proj.weight[:, 3] /= alpha
    return save_model(model.eval(), dst)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8keep")
    src = trained_tiny_model(str(root / "src"), steps=20, seed=2)  # NOTE: its plain ranking is not TARGET first
    return src, _outlier_twin(src, str(root / "outlier")), root


def _engine(path: str, weights=None):
    from localllm.models.loader import load_checkpoint
    from localllm.models.registry import build_model

    checkpoint = load_checkpoint(path)
    model = build_model(checkpoint.hf_config, torch.float32, torch.device("cpu"), max_model_len=64)
    model.load_weights(weights if weights is not None else checkpoint.weights())
    return model, checkpoint


def _logits(model, checkpoint) -> torch.Tensor:
    from localllm.forward_context import set_forward_context
    from localllm.models.registry import kv_cache_spec
    from localllm.quant.layerwise import prefill_context

    ids = torch.tensor(list(b"def f(x):\n    return x + 1\n"), dtype=torch.int64)
    context, positions = prefill_context(1, ids.numel(), *kv_cache_spec(checkpoint.hf_config), torch.float32,
                                         torch.device("cpu"))
    with torch.no_grad(), set_forward_context(context):
        return model.compute_logits(model(ids, positions))


def test_ranking_finds_the_linear_made_sensitive(models):
    src, outlier, root = models
    plain = quantize_model(src, str(root / "plain-k1"), QuantizeOptions(fp8_keep=1, **FAST))
    assert plain.kept != [TARGET]  # NOTE: else the test below could not fail
    report = quantize_model(outlier, str(root / "outlier-k1"), QuantizeOptions(fp8_keep=1, **FAST))
    assert report.kept == [TARGET]
    assert report.linears_16bit == 1 and report.linears_total == 8
    assert "[1 of 8 linears 16-bit]" in "\n".join(report.lines())
    assert "1 of 8 linears kept 16-bit" in "\n".join(report.lines())
    # and keeping it is what rescues the model from its outlier
    none = quantize_model(outlier, str(root / "outlier-k0"), QuantizeOptions(fp8_keep=0, **FAST))
    assert none.linears_16bit == 0 and "16-bit" not in none.lines()[1]
    assert report.ppl_quantized < none.ppl_quantized, (report.ppl_original, report.ppl_quantized, none.ppl_quantized)


def test_kept_linear_is_written_dense_and_ignored(models):
    _, _, root = models
    path = str(root / "outlier-k1")
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)["quantization_config"]
    assert config["ignore"] == ["lm_head", TARGET]
    from safetensors import safe_open

    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.get_tensor(TARGET + ".weight").dtype == torch.bfloat16
        assert f.get_tensor(OTHER_DOWN + ".weight").dtype == torch.float8_e4m3fn
    assert TARGET + ".weight_scale" not in names and OTHER_DOWN + ".weight_scale" in names


def test_ignored_linear_loads_dense_with_its_twins_logits(models):
    """The k=1 checkpoint against its twin: the k=0 checkpoint (every other tensor identical under
    round-to-nearest) with that one module swapped by hand for the source's weight at bf16."""
    from localllm.layers.fp8_linear import FP8Linear
    from localllm.layers.linear import Linear

    src, outlier, root = models
    kept, checkpoint = _engine(str(root / "outlier-k1"))
    module = kept.get_submodule(TARGET)
    assert isinstance(module, Linear) and not isinstance(module, FP8Linear)
    assert isinstance(kept.get_submodule(OTHER_DOWN), FP8Linear)
    twin, _ = _engine(str(root / "outlier-k0"))
    assert isinstance(twin.get_submodule(TARGET), FP8Linear)
    dense, _ = _engine(outlier)
    source_weight = dense.get_submodule(TARGET).weight.data.to(torch.bfloat16).float()
    assert torch.equal(module.weight.data, source_weight)
    twin.model.layers[TARGET_LAYER].mlp.down_proj = dense.get_submodule(TARGET)
    dense.get_submodule(TARGET).weight.data.copy_(source_weight)
    assert torch.equal(_logits(kept, checkpoint), _logits(twin, checkpoint))


def test_keeping_every_linear_gives_the_16_bit_model(models):
    """Fused modules: every q/k/v and gate/up part is in the ignore list, and the model loads whole
    in 16 bits, with the logits of the source rounded to bf16."""
    src, _, root = models
    path = str(root / "all")
    report = quantize_model(src, path, QuantizeOptions(fp8_keep=8, **FAST))
    assert report.linears_16bit == 8
    with open(os.path.join(path, "config.json")) as f:
        ignore = json.load(f)["quantization_config"]["ignore"]
    assert {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj",
            "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"} <= set(ignore)
    assert len(ignore) == 1 + 2 * 7
    model, checkpoint = _engine(path)
    from localllm.models.loader import load_checkpoint

    rounded = ((n, t.to(torch.bfloat16).float()) for n, t in load_checkpoint(src).weights())
    original, _ = _engine(src, rounded)
    assert torch.allclose(_logits(model, checkpoint), _logits(original, checkpoint), atol=1e-5, rtol=0)


def test_ignored_modules_name_each_fused_part():
    assert ignored_modules(("model.layers.2.self_attn.qkv_proj", "model.layers.0.mlp.gate_up_proj",
                            "model.layers.1.mlp.down_proj")) == [
        "model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.k_proj", "model.layers.2.self_attn.v_proj",
        "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.1.mlp.down_proj"]
    assert quantization_config("fp8", 8, 128, True, False, 0.01)["ignore"] == ["lm_head"]
    with pytest.raises(ValueError):
        quantization_config("gptq", 4, 128, True, False, 0.01, kept=("model.layers.0.mlp.down_proj",))


def test_default_and_bad_values():
    assert DEFAULT_FP8_KEEP_FRACTION == 0.125
    assert QuantizeOptions(method="fp8").fp8_keep_count(120) == 15  # SmolLM2-135M (README)
    assert QuantizeOptions(method="fp8").fp8_keep_count(8) == 1  # rounded up: never none by default
    assert QuantizeOptions(method="fp8", fp8_keep=0).fp8_keep_count(120) == 0
    assert QuantizeOptions(method="fp8", fp8_keep=5).fp8_keep_count(120) == 5
    assert QuantizeOptions(method="gptq").fp8_keep_count(120) == 0
    assert "the most sensitive linears 16-bit" in QuantizeOptions(method="fp8").scheme_name()
    assert "16-bit" not in QuantizeOptions(method="fp8", fp8_keep=0, fp8_keep_activations=0).scheme_name()
    assert "15 most sensitive linears 16-bit" in QuantizeOptions(method="fp8").scheme_name(15)
    for bad, needle in ((-1, "--fp8-keep"), (True, "--fp8-keep"), (2.5, "--fp8-keep")):
        with pytest.raises(QuantizeError, match=needle):
            QuantizeOptions(method="fp8", fp8_keep=bad).validate()
    with pytest.raises(QuantizeError, match="--method gptq"):
        QuantizeOptions(method="gptq", fp8_keep=2).validate()
    QuantizeOptions(method="gptq", fp8_keep=0).validate()  # nothing kept: fine with any method


def test_rounding_error_is_per_token_e4m3():
    """A token whose amax is 1e7 times its other channels loses them (below e4m3's smallest
    subnormal); the token beside it keeps e4m3's relative error of at most 1/16."""
    from localllm.quant.sensitivity import rounding_errors

    w = torch.eye(4)
    x = torch.tensor([[1e7, 1.0, -1.0, 0.5], [3.0, 1.0, -1.0, 0.7]])
    dy, dy_inputs = rounding_errors(x, w)
    torch.testing.assert_close(dy[0, 1:], -x[0, 1:])
    assert dy[0, 0] == 0 and float((dy[1] / x[1]).abs().max()) <= 1 / 16
    assert float(dy[1].abs().max()) > 0  # 0.7 is not on the e4m3 grid at this token's scale
    assert torch.equal(dy_inputs, dy)  # identity weights are exact: all of the error is the inputs'
    dy, dy_inputs = rounding_errors(x, w, round_inputs=False)
    assert torch.equal(dy, torch.zeros(2, 4)) and torch.equal(dy_inputs, torch.zeros(2, 4))


def test_rounding_errors_split_weights_from_inputs():
    """dy_inputs is (Q(x) - x) Q(W)^T; the rest of dy is x (Q(W) - W)^T."""
    from localllm.quant.fp8 import amax_scales, round_fp8
    from localllm.quant.sensitivity import rounding_errors

    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 16, generator=gen), torch.randn(8, 16, generator=gen)
    dy, dy_inputs = rounding_errors(x, w)
    x_q, w_q = round_fp8(x, amax_scales(x)), round_fp8(w, amax_scales(w))
    torch.testing.assert_close(dy_inputs, (x_q - x) @ w_q.t())
    torch.testing.assert_close(dy - dy_inputs, x @ (w_q - w).t())
    assert float(dy_inputs.abs().max()) > 0 and float((dy - dy_inputs).abs().max()) > 0


def test_more_than_the_model_has_fails_before_writing(models, tmp_path):
    src, _, _ = models
    out = tmp_path / "out"
    with pytest.raises(QuantizeError, match="more than the model's 8 decoder linears"):
        prepare(src, str(out), QuantizeOptions(fp8_keep=9, **FAST))
    assert not out.exists() or not os.listdir(out)
