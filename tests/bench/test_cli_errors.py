"""Bad input to `localllm bench` is one `error:` line on stderr and exit code 1, never a traceback;
`--help` and the bench group load no torch."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from localllm.cli.main import app

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_error(args: list[str], *contains: str) -> str:
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), result.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1
    for text in contains:
        assert text in lines[-1], lines[-1]
    return lines[-1]


def test_unreachable_url():
    assert_one_error(["serve", "--url", f"http://127.0.0.1:{free_port()}", "--num-prompts", "2"],
                     "cannot reach http://127.0.0.1:")


@pytest.mark.parametrize("args, contains", [
    (["serve", "--num-prompts", "0"], "num-prompts must be a positive integer, got 0"),
    (["serve", "--input-len", "-3"], "input-len must be a positive integer, got -3"),
    (["serve", "--output-len", "0"], "output-len must be a positive integer"),
    (["serve", "--url", "127.0.0.1:8000"], "--url must start with http://"),
    (["serve", "--endpoint", "embeddings"], "--endpoint must be one of completions, chat"),
    (["serve", "--concurrency", "0"], "--concurrency takes positive numbers"),
    (["serve", "--concurrency", "two"], "--concurrency takes positive numbers"),
    (["serve", "--rate", "-1"], "--rate takes positive numbers"),
    (["serve", "--rate", "1,2", "--concurrency", "1,4"], "with --rate, --concurrency is one cap"),
    (["serve", "--plot", "out.svg"], "--plot writes a PNG"),
    (["throughput", "--num-prompts", "0"], "num-prompts must be a positive integer"),
    (["throughput", "--input-len", "-1"], "input-len must be a positive integer, got -1"),
    (["throughput", "--vs", "vllm"], "--vs must be one of hf, llama.cpp, got 'vllm'"),
    (["throughput", "--quantization", "gptq"], "--quantization must be auto, int4 or none"),
    (["latency", "--output-len", "-5"], "output-len must be a positive integer, got -5"),
    (["latency", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["latency", "--num-iters", "0"], "--num-iters must be >= 1"),
    (["latency", "--batch-size", "8", "--max-num-seqs", "4"], "--batch-size 8 is more than --max-num-seqs 4"),
])
def test_bad_values_fail_before_any_work(args, contains):
    assert_one_error(args, contains)


@pytest.mark.parametrize("command", ["throughput", "latency"])
def test_unknown_model(command, tmp_path):
    assert_one_error([command, str(tmp_path / "missing.gguf"), "--input-len", "4", "--output-len", "2"],
                     "not found", "missing.gguf")
    assert_one_error([command, "no-such-model-alias", "--input-len", "4", "--output-len", "2"],
                     "model 'no-such-model-alias' not found")


def test_lengths_past_the_context(tiny_llama):
    assert_one_error(["latency", tiny_llama, "--input-len", "200", "--output-len", "100", "--device", "cpu"],
                     "input-len 200 + output-len 100 is more than the model's context (256 tokens")


def test_bench_help_imports_no_torch():
    code = ("import sys; from typer.testing import CliRunner; from localllm.cli.main import app; "
            "r = CliRunner().invoke(app, ['bench', '--help']); assert r.exit_code == 0, r.output; "
            "assert 'throughput' in r.output and 'latency' in r.output and 'serve' in r.output; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
