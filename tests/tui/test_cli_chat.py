"""`localllm chat` through Typer's runner: flags reach the app, bad values fail in one line,
and the CLI does not import Textual or torch before the command runs."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from localllm.cli.main import app as cli
from localllm.tui.app import LATEST, ChatApp
from localllm.tui.engine_backend import EngineBackend
from localllm.tui.http_backend import HttpBackend

runner = CliRunner()


@pytest.fixture
def launched(monkeypatch):
    """The ChatApp each `localllm chat` would run (not run: recorded)."""
    apps: list[ChatApp] = []
    monkeypatch.setattr(ChatApp, "run", lambda self: apps.append(self))
    return apps


def test_flags_reach_the_app(launched, data_dir):
    result = runner.invoke(cli, [
        "chat", "./models/Qwen2.5-0.5B-Instruct.gguf", "--system", "Be brief.", "--temperature", "0",
        "--max-tokens", "64", "--top-k", "5", "--seed", "1", "--stop", "END", "--max-model-len", "4096",
        "--device", "cpu", "--kv-cache-blocks", "32", "--kv-cache-dtype", "float32", "--continue",
    ])
    assert result.exit_code == 0, result.output
    app = launched[0]
    settings = app.default_settings
    assert (settings.temperature, settings.max_tokens, settings.top_k, settings.seed, settings.stop) == (
        0.0, 64, 5, 1, ("END",))
    assert app.default_system == "Be brief." and app.open_chat == LATEST
    assert app.model_label == "Qwen2.5-0.5B-Instruct"
    assert isinstance(app.backend, EngineBackend) and app.backend.llm is None  # loads later, in the app
    assert app.backend.model == "./models/Qwen2.5-0.5B-Instruct.gguf"
    assert app.backend.engine_args == {"max_model_len": 4096, "device": "cpu", "dtype": "auto", "kv_cache_blocks": 32,
                                       "kv_cache_dtype": "float32"}
    assert app.store.path.parent == data_dir


def test_default_model_url_and_data_dir(launched, tmp_path):
    result = runner.invoke(cli, ["chat", "--url", "http://127.0.0.1:8000/", "--chat", "3",
                                 "--data-dir", str(tmp_path / "chats")])
    assert result.exit_code == 0, result.output
    app = launched[0]
    assert isinstance(app.backend, HttpBackend) and app.backend.url == "http://127.0.0.1:8000"
    assert app.backend.model is None and app.open_chat == 3
    assert app.store.path.parent == tmp_path / "chats"
    result = runner.invoke(cli, ["chat"])
    assert launched[1].backend.model == "smollm2" and launched[1].open_chat is None


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "error: temperature must be >= 0, got -1.0"),
    (["--top-p", "0"], "error: top_p must be in (0, 1], got 0.0"),
    (["--continue", "--chat", "2"], "error: --continue and --chat are exclusive"),
])
def test_bad_flags_fail_in_one_line(launched, args, message):
    result = runner.invoke(cli, ["chat", *args])
    assert result.exit_code == 1 and result.stderr.strip() == message and not launched


def test_help_lists_chat_and_imports_neither_textual_nor_torch():
    result = runner.invoke(cli, ["--help"])
    assert "chat" in result.stdout
    code = "import sys, localllm.cli.main; print(sorted(m for m in ('textual', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
