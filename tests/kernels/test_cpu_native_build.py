"""Building the C CPU kernels: once per machine into $LOCALLLM_HOME, reused by later processes,
and a failed build leaves the torch reference in charge with one logged reason. Each case runs in
a fresh process (the library is loaded once per process)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

PROBE = (
    "import logging; logging.basicConfig(level=logging.INFO, format='%(message)s');"
    "from localllm.kernels import cpu_native; print('LOADED' if cpu_native.library() is not None else 'NONE')"
)


def probe(home, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LOCALLLM_HOME": str(home), **env})


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler here")
def test_built_once_then_loaded_from_the_cache(tmp_path):
    first = probe(tmp_path)
    assert first.stdout.strip() == "LOADED", first.stderr
    (built,) = list((tmp_path / "cpu_kernels").glob("decode_ops-*.so"))
    stamp = built.stat().st_mtime_ns
    second = probe(tmp_path)
    assert second.stdout.strip() == "LOADED"
    assert built.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [p.name for p in (tmp_path / "cpu_kernels").iterdir()] == [built.name]  # no partial files left


def test_a_failed_build_falls_back_to_torch_with_a_reason(tmp_path):
    result = probe(tmp_path, CC="/bin/false")
    assert result.stdout.strip() == "NONE"
    assert "building the CPU decode kernels failed, using torch ops instead" in result.stderr
    assert not list((tmp_path / "cpu_kernels").glob("*.so"))


def test_switched_off_by_the_environment(tmp_path):
    result = probe(tmp_path, LOCALLLM_CPU_KERNELS="0")
    assert result.stdout.strip() == "NONE"
    assert not (tmp_path / "cpu_kernels").exists()
