"""EngineBackend's pieces that need no model: pull messages as load steps, names, labels."""

from __future__ import annotations

from types import SimpleNamespace

import localllm.hub
from localllm.hub.progress import PullProgress
from localllm.tui.engine_backend import _find_or_pull, _quantization_label, display_name


def test_a_pull_shows_its_messages_as_load_steps(monkeypatch):
    calls = []

    byte_event = PullProgress("download", "model.safetensors", 500, 1000, 50.0, 600, 1500, 60.0)
    layer_event = PullProgress("quantize", "awq", 3, 28, 0.0, 3, 28, 0.0, unit="layer")

    def fake_ensure_model(name, *, device, log, progress):
        calls.append((name, device))
        log("qwen3-0.6b is not in the store: pulling it")
        log("pulling qwen3-0.6b from Qwen/Qwen3-0.6B: 3 file(s), 1.5 GB")
        progress(byte_event)
        progress(layer_event)
        return "/store/qwen3-0.6b"

    monkeypatch.setattr(localllm.hub, "ensure_model", fake_ensure_model)
    steps = []
    assert _find_or_pull("qwen3-0.6b", "cpu", steps.append) == "/store/qwen3-0.6b"
    assert calls == [("qwen3-0.6b", "cpu")]
    assert [s.label for s in steps] == [
        "find qwen3-0.6b",
        "qwen3-0.6b is not in the store: pulling it",
        "pulling qwen3-0.6b from Qwen/Qwen3-0.6B: 3 file(s), 1.5 GB",
        "download qwen3-0.6b",
        "quantize qwen3-0.6b (awq)",
    ]
    # the bar is the whole pull (bytes of every file; layers); the event rides along for the file lines
    assert [(s.done, s.total, s.pull) for s in steps[3:]] == [(600, 1500, byte_event), (3, 28, layer_event)]


def test_display_name_and_quantization_label():
    assert display_name("smollm2") == "smollm2"
    assert display_name("/models/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1"
    assert display_name("./Qwen2.5-0.5B-Instruct/") == "Qwen2.5-0.5B-Instruct"

    def llm(quantization, dtype, stored):
        runner = SimpleNamespace(quantization=quantization, dtype=dtype)
        return SimpleNamespace(engine=SimpleNamespace(runner=runner, checkpoint=SimpleNamespace(weight_quantization=stored)))

    assert _quantization_label(llm("int4", "torch.float32", "Q4_1")) == "int4 (Q4_1)"
    assert _quantization_label(llm(None, "torch.bfloat16", None)) == "bfloat16"
    assert _quantization_label(SimpleNamespace()) is None
