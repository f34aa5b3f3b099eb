"""`localllm serve` as a command: flags, start-up errors, no heavy imports at `--help`.
(It is run for real, SmolLM2 in a subprocess, by the `real_server` fixture; its Ctrl-C exit is
checked there.)"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from localllm.cli.main import app
from localllm.errors import ModelNotFoundError

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_build(monkeypatch):
    """Record what `serve` would build and run instead of loading a model and serving."""
    import localllm.cli.serve as serve_module

    calls = {}

    class Engine:
        def shutdown(self):
            calls["shutdown"] = True

    def make_engine(model, **kwargs):
        calls["engine"] = (model, kwargs)
        if "error" in calls:
            raise calls["error"]
        return Engine()

    def run(llm, model, sock, host, port, api_key, names, max_pending_seqs, allowed_origins, log_level):
        calls["run"] = dict(model=model, host=host, port=port, api_key=api_key, names=names,
                            max_pending_seqs=max_pending_seqs, allowed_origins=allowed_origins, bound=sock.getsockname())
        sock.close()

    monkeypatch.setattr(serve_module, "_make_engine", make_engine)
    monkeypatch.setattr(serve_module, "_run", run)
    return calls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_lists_serve_and_its_flags():
    assert "serve" in runner.invoke(app, ["--help"]).stdout
    result = runner.invoke(app, ["serve", "--help"])
    for flag in ("--host", "--port", "--api-key", "--served-model-name", "--max-queue", "--max-model-len", "--kv-cache-blocks",
                 "--allowed-origins"):
        assert flag in result.stdout


def test_defaults_and_flags_reach_engine_and_server(fake_build):
    port = free_port()
    result = runner.invoke(app, ["serve", "--port", str(port)])
    assert result.exit_code == 0, result.output
    model, kwargs = fake_build["engine"]
    assert model == "smollm2" and kwargs["quantization"] == "auto" and kwargs["max_num_seqs"] == 64
    run = fake_build["run"]
    assert run["host"] == "127.0.0.1" and run["bound"] == ("127.0.0.1", port)  # loopback unless told otherwise
    assert run["api_key"] is None and run["max_pending_seqs"] == 64 + 256
    assert run["allowed_origins"] == ()  # no cross-origin access unless asked
    assert fake_build["shutdown"]

    result = runner.invoke(app, [
        "serve", "./m.gguf", "--port", str(port), "--api-key", "k", "--served-model-name", "a", "--served-model-name", "b",
        "--max-num-seqs", "8", "--max-queue", "4", "--max-model-len", "512", "--quantization", "none",
        "--kv-cache-blocks", "32", "--kv-cache-dtype", "bfloat16", "--device", "cpu", "--dtype", "float32",
    ])
    assert result.exit_code == 0, result.output
    model, kwargs = fake_build["engine"]
    assert model == "./m.gguf"
    assert kwargs == {"max_model_len": 512, "max_num_seqs": 8, "device": "cpu", "dtype": "float32",
                      "quantization": None, "kv_cache_blocks": 32, "kv_cache_dtype": "bfloat16"}
    run = fake_build["run"]
    assert run["api_key"] == "k" and run["names"] == ["a", "b"] and run["max_pending_seqs"] == 12


def test_api_key_from_the_environment(fake_build):
    result = runner.invoke(app, ["serve", "--port", str(free_port())], env={"LOCALLLM_API_KEY": "from-env"})
    assert result.exit_code == 0, result.output
    assert fake_build["run"]["api_key"] == "from-env"


def test_allowed_origins_flag_and_environment(fake_build):
    port = str(free_port())
    result = runner.invoke(app, ["serve", "--port", port, "--allowed-origins", "http://localhost:3000",
                                 "--allowed-origins", "http://127.0.0.1:*,https://app.example.com/"])
    assert result.exit_code == 0, result.output
    assert fake_build["run"]["allowed_origins"] == ("http://localhost:3000", "http://127.0.0.1:*", "https://app.example.com")
    result = runner.invoke(app, ["serve", "--port", port], env={"LOCALLLM_ALLOWED_ORIGINS": "*"})
    assert result.exit_code == 0, result.output
    assert fake_build["run"]["allowed_origins"] == ("*",)
    fake_build.clear()
    result = runner.invoke(app, ["serve", "--port", port, "--allowed-origins", "localhost:3000"])
    assert result.exit_code == 1 and "--allowed-origins" in result.stderr and "engine" not in fake_build


def test_port_in_use_fails_before_loading(fake_build):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        result = runner.invoke(app, ["serve", "--port", str(taken.getsockname()[1])])
    assert result.exit_code == 1
    assert "cannot listen on 127.0.0.1:" in result.stderr
    assert "engine" not in fake_build


def test_model_errors_are_one_line(fake_build):
    fake_build["error"] = ModelNotFoundError("nope", "try `localllm pull nope`")
    result = runner.invoke(app, ["serve", "nope", "--port", str(free_port())])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == "error: model 'nope' not found: try `localllm pull nope`"
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, words", [
    (["--port", "0"], "--port"),
    (["--max-queue", "-1"], "--max-queue"),
    (["--quantization", "int8"], "--quantization"),
])
def test_bad_flags(fake_build, args, words):
    result = runner.invoke(app, ["serve", *args])
    assert result.exit_code == 1 and words in result.stderr and "engine" not in fake_build


def test_cli_import_does_not_load_the_server_stack():
    code = (
        "import sys, localllm.cli.main\n"
        "heavy = [m for m in ('fastapi', 'uvicorn', 'xgrammar', 'prometheus_client', 'localllm.server') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
