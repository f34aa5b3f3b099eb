"""`localllm quantize` through Typer's runner: a report on stdout, a standard-format directory on
disk; every kind of bad input is one `error:` line and leaves nothing in (or beside) the output
directory."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from typer.testing import CliRunner

from localllm.cli.main import app
from tests.quant.tiny import random_tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return random_tiny_model(str(tmp_path_factory.mktemp("src")), seed=3)


def quantize(*args: str):
    return runner.invoke(app, ["quantize", *args])


def leftovers(directory) -> list[str]:
    return [name for name in os.listdir(directory) if ".partial-" in name]


def test_rtn_writes_awq_gemm_and_reports(tiny, tmp_path):
    out = tmp_path / "out"
    result = quantize(tiny, "--method", "rtn", "-g", "32", "--seq-len", "64", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ppl_quantized"] > 0 and 0 < report["top1_agreement"] <= 1
    assert report["disk_quantized"] < report["disk_original"]
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True,
                                             "version": "gemm", "modules_to_not_convert": None}
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert leftovers(tmp_path) == []


def test_report_text_names_what_was_given_up(tiny, tmp_path):
    result = quantize(tiny, "--method", "fp8", "--seq-len", "64", "-o", str(tmp_path / "fp8"))
    assert result.exit_code == 0, result.output
    for phrase in ("perplexity", "top-1 agreement", "on disk", "in memory", "peak memory"):
        assert phrase in result.stdout
    assert re.search(r"\([+-]\d+\.\d\d% ± \d+\.\d\d\)", result.stdout), result.stdout  # the change's standard error


def test_change_standard_error():
    from localllm.quant.quantize import change_standard_error

    original = torch.zeros(4, 10)
    quantized = torch.tensor([0.01, 0.03, 0.01, 0.03]).view(4, 1).expand(4, 10)
    # per-window changes 0.01, 0.03, 0.01, 0.03: sample sd 0.011547, over sqrt(4): 0.5774%, times
    # exp(0.02) for the ratio: 0.5890%
    assert abs(change_standard_error(original, quantized) - 0.57735 * 1.0202013) < 1e-4
    assert change_standard_error(original[:1], quantized[:1]) is None


@pytest.mark.parametrize("args,message", [
    (["--method", "squeeze"], "unknown method 'squeeze'"),
    (["--method", "awq", "--bits", "8"], "awq cannot hold 8-bit weights"),
    (["--method", "gptq", "--bits", "3"], "gptq cannot hold 3-bit weights"),
    (["--method", "fp8", "--bits", "4"], "fp8 cannot hold 4-bit weights"),
    (["--method", "awq", "-g", "48"], "group size 48 does not divide the 64 input features"),
    (["--method", "gptq", "--calib", "/nonexistent/calib.txt"], "calibration file '/nonexistent/calib.txt' not found"),
    (["--method", "fp8", "--fp8-keep", "-1"], "--fp8-keep must be a number of linears >= 0 with --method fp8, got -1"),
    (["--method", "awq", "--fp8-keep-activations", "2"],
     "--fp8-keep-activations must be a number of linears >= 0 with --method fp8, got 2 with --method awq"),
    (["--method", "gptq", "--fp8-keep", "2"], "--fp8-keep must be a number of linears >= 0 with --method fp8, got 2"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny, tmp_path, args, message):
    out = tmp_path / "out"
    result = quantize(tiny, *args, "-o", str(out))
    assert result.exit_code == 1
    assert message in result.output
    assert result.output.strip().count("\n") == 0, result.output  # one line
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("keep", [0, 2])
def test_fp8_keep_leaves_that_many_linears_dense(tiny, tmp_path, keep):
    out = tmp_path / f"keep{keep}"
    result = quantize(tiny, "--method", "fp8", "--fp8-keep", str(keep), "--seq-len", "64", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["linears_16bit"] == len(report["kept"]) == keep
    ignore = set(json.loads((out / "config.json").read_text())["quantization_config"].get("ignore") or [])
    # Each kept linear is in `ignore` under its checkpoint names (a fused qkv_proj as q, k and v).
    expected = {"lm_head"}
    for name in report["kept"]:
        parts = ("q_proj", "k_proj", "v_proj") if name.endswith("qkv_proj") else (
            ("gate_proj", "up_proj") if name.endswith("gate_up_proj") else (name.rsplit(".", 1)[1],))
        expected |= {f"{name.rsplit('.', 1)[0]}.{part}" for part in parts}
    assert ignore == expected


def test_already_quantized_input_is_refused(tiny, tmp_path):
    first = tmp_path / "first"
    assert quantize(tiny, "--method", "rtn", "-g", "32", "--seq-len", "64", "-o", str(first)).exit_code == 0
    result = quantize(str(first), "--method", "gptq", "-o", str(tmp_path / "second"))
    assert result.exit_code == 1 and "is already quantized (awq)" in result.output
    assert not (tmp_path / "second").exists()


def test_existing_output_is_never_touched(tiny, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = quantize(tiny, "--method", "rtn", "-g", "32", "-o", str(out))
    assert result.exit_code == 1 and "already exists and is not an empty directory" in result.output
    assert os.listdir(out) == ["keep.txt"]


def test_a_failure_midway_leaves_nothing_behind(tiny, tmp_path, monkeypatch):
    import localllm.quant.run_layers as run_layers

    calls = []

    def failing_export(index, *args, **kwargs):
        calls.append(index)
        if index == 1:
            raise RuntimeError("disk on fire")
        return real_export(index, *args, **kwargs)

    real_export = run_layers.export_layer
    monkeypatch.setattr(run_layers, "export_layer", failing_export)
    out = tmp_path / "out"
    result = quantize(tiny, "--method", "rtn", "-g", "32", "--seq-len", "64", "-o", str(out))
    assert calls == [0, 1] and result.exit_code != 0
    assert not out.exists() and leftovers(tmp_path) == []


def test_the_progress_line_says_whether_the_method_calibrates(tiny, tmp_path, monkeypatch):
    from rich.progress import Progress

    labels: list[str] = []
    add_task = Progress.add_task
    monkeypatch.setattr(Progress, "add_task", lambda self, description, *a, **k: labels.append(description)
                        or add_task(self, description, *a, **k))
    fp8 = quantize(tiny, "--method", "fp8", "--samples", "2", "--seq-len", "32", "-o", str(tmp_path / "fp8"), "--json")
    assert fp8.exit_code == 0, fp8.output
    rtn = quantize(tiny, "--method", "rtn", "-g", "32", "--seq-len", "32", "-o", str(tmp_path / "rtn"), "--json")
    assert rtn.exit_code == 0, rtn.output
    assert labels == ["calibrating", "quantizing"]  # fp8 runs GPTQ on the e4m3 grid by default
