"""FP8 with FP8 weights everywhere but 16-bit activations in the linears whose input rounding costs
most (QuantizeOptions.fp8_keep_activations): the ranking finds a linear whose inputs were made
fragile on purpose, the file holds its weights in FP8 under a second, weight-only config group
that compressed-tensors itself resolves as meant, the engine loads it weight-only with the logits
of a twin flipped by hand, and bad configs and values fail with one clear line."""

from __future__ import annotations

import json
import os

import pytest
import torch

from localllm.errors import ModelLoadError
from localllm.quant.config import _compressed_tensors
from localllm.quant.export import fused_target
from localllm.quant.formats import compressed_tensors
from localllm.quant.quantize import (DEFAULT_FP8_KEEP_ACTIVATIONS_FRACTION, QuantizeError, QuantizeOptions, prepare,
                                     quantize_model)
from tests.quant.test_fp8_keep import FAST, TARGET, _engine, _logits, _outlier_twin
from tests.quant.tiny import trained_tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8acts")
    src = trained_tiny_model(str(root / "src"), steps=20, seed=2)  # NOTE: its plain ranking is not TARGET first
    return src, _outlier_twin(src, str(root / "outlier")), root


def test_ranking_keeps_the_activations_made_fragile(models):
    """In the outlier twin, TARGET's inputs carry one channel 1e7 times the others: per-token e4m3
    rounds the others to zero. Its weights are ordinary, so what keeping its activations saves is
    the input rounding, which the activation score ranks first."""
    src, outlier, root = models
    plain = quantize_model(src, str(root / "plain-a1"), QuantizeOptions(**{**FAST, "fp8_keep_activations": 1},
                                                                        fp8_keep=0))
    assert plain.kept_activations != [TARGET]  # NOTE: else the test below could not fail
    report = quantize_model(outlier, str(root / "outlier-a1"),
                            QuantizeOptions(**{**FAST, "fp8_keep_activations": 1}, fp8_keep=0))
    assert report.kept_activations == [TARGET] and report.kept == []
    assert report.linears_16bit_activations == 1 and report.linears_16bit == 0
    assert "1 more with 16-bit activations" in report.scheme
    assert "[0 of 8 linears 16-bit, 1 with 16-bit activations]" in "\n".join(report.lines())
    none = quantize_model(outlier, str(root / "outlier-a0"), QuantizeOptions(**FAST, fp8_keep=0))
    assert none.linears_16bit_activations == 0
    assert report.ppl_quantized < none.ppl_quantized, (report.ppl_original, report.ppl_quantized, none.ppl_quantized)
    # the same bytes on disk: FP8 weights either way
    assert report.disk_quantized == none.disk_quantized


def test_kept_activations_are_written_as_a_weight_only_group(models):
    _, _, root = models
    path = str(root / "outlier-a1")
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)["quantization_config"]
    assert config["ignore"] == ["lm_head"]
    groups = config["config_groups"]
    assert groups["group_0"]["targets"] == ["Linear"] and groups["group_0"]["input_activations"]["dynamic"]
    assert groups["group_1"]["targets"] == [fused_target(TARGET)] and groups["group_1"]["input_activations"] is None
    assert groups["group_1"]["weights"] == groups["group_0"]["weights"]
    from safetensors import safe_open

    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        assert f.get_tensor(TARGET + ".weight").dtype == torch.float8_e4m3fn
        assert f.get_tensor(TARGET + ".weight_scale").shape[-1] == 1


def test_compressed_tensors_resolves_the_two_groups_as_meant():
    """The independent reading: compressed-tensors matches exact names before the "Linear" class,
    so the named module takes the weight-only scheme and every other Linear the dynamic one."""
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config

    raw = compressed_tensors.fp8_config(["lm_head"], activations_16bit=[
        fused_target("model.layers.1.mlp.gate_up_proj"), fused_target("model.layers.0.mlp.down_proj")])

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.layers = torch.nn.ModuleList()
            for _ in range(2):
                layer = torch.nn.Module()
                layer.mlp = torch.nn.Module()
                layer.mlp.up_proj, layer.mlp.down_proj = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
                self.model.layers.append(layer)
            self.lm_head = torch.nn.Linear(8, 8)

    model = Tiny()
    apply_quantization_config(model, QuantizationConfig.model_validate(raw))
    schemes = {n: getattr(m, "quantization_scheme", None) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)}
    assert schemes.pop("lm_head") is None
    assert schemes.pop("model.layers.1.mlp.up_proj").input_activations is None
    assert schemes.pop("model.layers.0.mlp.down_proj").input_activations is None
    assert all(s.input_activations is not None and s.input_activations.dynamic for s in schemes.values())
    assert ct is not None


def test_engine_loads_it_weight_only_with_its_twins_logits(models):
    """The a=1 checkpoint against its twin: the a=0 checkpoint (identical tensors under
    round-to-nearest) with TARGET's layer switched to 16-bit activations by hand."""
    from localllm.layers.fp8_linear import FP8Linear

    _, _, root = models
    model, checkpoint = _engine(str(root / "outlier-a1"))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, FP8Linear)}
    assert len(layers) == 8 and layers[TARGET].weight_only
    assert not any(m.weight_only for n, m in layers.items() if n != TARGET)
    twin, _ = _engine(str(root / "outlier-a0"))
    assert not twin.get_submodule(TARGET).weight_only
    twin_logits = _logits(twin, checkpoint)
    twin.get_submodule(TARGET).weight_only = True
    assert not torch.equal(twin_logits, _logits(twin, checkpoint))  # the switch matters here
    assert torch.equal(_logits(model, checkpoint), _logits(twin, checkpoint))


def test_targets_match_fused_names_and_their_parts_only():
    """vLLM matches a config group's targets against its fused layer names (qkv_proj, gate_up_proj)
    first and only then tries the "Linear" class; compressed-tensors and transformers match the
    checkpoint's part names. The weight-only group's targets must hit both, and nothing else."""
    import re

    from localllm.layers.quantized_linear import checkpoint_names

    for name in ("model.layers.3.mlp.gate_up_proj", "model.layers.3.self_attn.qkv_proj",
                 "model.layers.3.mlp.down_proj", "model.layers.3.self_attn.o_proj"):
        pattern = fused_target(name)[3:]
        assert re.match(pattern, name)
        assert all(re.match(pattern, part) for part in checkpoint_names(name))
        others = ["model.layers.13.mlp.up_proj", "model.layers.3.mlp.up_proj_extra", "xmodel.layers.3.mlp.down_proj",
                  "model.layers.3.self_attn.o_proj" if "mlp" in name else "model.layers.3.mlp.down_proj"]
        assert not any(re.match(pattern, other) for other in others), name


def _two_groups(**changes) -> dict:
    raw = compressed_tensors.fp8_config(["lm_head"], activations_16bit=["model.layers.0.mlp.down_proj"])
    for key, value in changes.items():
        raw["config_groups"]["group_1"][key] = value
    return raw


def test_config_parsing_of_two_groups():
    scheme = _compressed_tensors(_two_groups(), "config.json")
    assert scheme.method == "fp8" and not scheme.fp8_weight_only
    assert scheme.fp8_activations_16bit == ("model.layers.0.mlp.down_proj",)
    assert scheme.for_modules(["model.layers.0.mlp.down_proj"]).fp8_weight_only
    assert scheme.for_modules(["model.layers.1.mlp.down_proj"]) is scheme
    fused = _compressed_tensors(_two_groups(targets=["model.layers.0.mlp.gate_proj"]), "config.json")
    with pytest.raises(ValueError, match="only some of"):
        fused.for_modules(["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"])
    both = _compressed_tensors(_two_groups(targets=["re:.*mlp.(gate|up)_proj$"]), "config.json")
    assert both.for_modules(["model.layers.3.mlp.gate_proj", "model.layers.3.mlp.up_proj"]).fp8_weight_only


@pytest.mark.parametrize("changes", [
    dict(input_activations=compressed_tensors.FP8_DYNAMIC_SCHEME["input_activations"]),  # two dynamic groups
    dict(targets=["Linear"]),  # both groups on the class
    dict(weights={**compressed_tensors.FP8_DYNAMIC_SCHEME["weights"], "type": "int", "num_bits": 4,
                  "strategy": "group", "group_size": 128}, format="pack-quantized"),  # a W4A16 group
])
def test_other_two_group_configs_are_refused(changes):
    with pytest.raises(ModelLoadError, match="two config groups"):
        _compressed_tensors(_two_groups(**changes), "config.json")


def test_default_and_bad_values(models, tmp_path):
    assert DEFAULT_FP8_KEEP_ACTIVATIONS_FRACTION == 0.25
    assert QuantizeOptions(method="fp8").fp8_keep_activations_count(120) == 30
    assert QuantizeOptions(method="fp8", fp8_weight_only=True).fp8_keep_activations_count(120) == 0
    assert QuantizeOptions(method="gptq").fp8_keep_activations_count(120) == 0
    assert "16-bit activations in the next most sensitive" in QuantizeOptions(method="fp8").scheme_name()
    assert QuantizeOptions(method="fp8", fp8_keep=0, fp8_algorithm="rtn").needs_calibration_text
    for bad in (-1, True, 2.5):
        with pytest.raises(QuantizeError, match="--fp8-keep-activations"):
            QuantizeOptions(method="fp8", fp8_keep_activations=bad).validate()
    with pytest.raises(QuantizeError, match="--method awq"):
        QuantizeOptions(method="awq", fp8_keep_activations=3).validate()
    with pytest.raises(QuantizeError, match="weight-only"):
        QuantizeOptions(method="fp8", fp8_weight_only=True, fp8_keep_activations=3).validate()
    src, _, _ = models
    out = tmp_path / "out"
    with pytest.raises(QuantizeError, match="fp8_keep 3 \\+ fp8_keep_activations 6 is more than the model's 8"):
        prepare(src, str(out), QuantizeOptions(**{**FAST, "fp8_keep_activations": 6}, fp8_keep=3))
    assert not out.exists() or not os.listdir(out)


def test_selection_takes_16_bit_linears_by_score_then_activations_by_their_own(monkeypatch):
    """One sensitivity pass, two rankings: the kept linears by the whole FP8 error, then among the
    rest the ones whose input rounding costs most."""
    from types import SimpleNamespace

    from localllm.quant import run_layers
    from localllm.quant.sensitivity import LinearSensitivity

    ranked = [LinearSensitivity("a", 9.0, 1, 1.0), LinearSensitivity("b", 8.0, 1, 7.0),
              LinearSensitivity("c", 5.0, 1, 6.0), LinearSensitivity("d", 1.0, 1, 6.5)]
    monkeypatch.setattr(run_layers, "fp8_sensitivity", lambda *args, **kwargs: ranked)
    config = SimpleNamespace(rms_norm_eps=1e-5, num_hidden_layers=1, tie_word_embeddings=True)
    source = SimpleNamespace(get=lambda name: torch.ones(4), names=lambda: ["model.norm.weight"])
    calibration = SimpleNamespace(samples=torch.zeros(4, 8, dtype=torch.int64))
    options = QuantizeOptions(method="fp8")

    def select(num_kept, num_kept_activations):
        return run_layers._most_sensitive(config, source, None, calibration, options, num_kept,
                                          num_kept_activations, torch.ones(16, 4))

    assert select(1, 2) == (("a",), ("b", "d"))
    assert select(0, 1) == ((), ("b",))
    assert select(2, 2) == (("a", "b"), ("d", "c"))
    assert select(3, 0) == (("a", "b", "c"), ())
