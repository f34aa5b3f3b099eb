"""The top-level `localllm` app: --version, --help, and no heavy imports at startup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import localllm
from localllm.cli.main import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"localllm {localllm.__version__}\n"


def test_help_lists_run():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "run" in result.stdout


def test_run_help_shows_flags():
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    for flag in ("--max-tokens", "--temperature", "--stop", "--raw", "--system", "--max-model-len"):
        assert flag in result.stdout


def test_cli_import_does_not_load_torch():
    code = (
        "import sys, localllm.cli.main\n"
        "heavy = [m for m in ('torch', 'transformers', 'numpy', 'localllm.engine.async_llm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
