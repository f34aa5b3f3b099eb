"""`localllm run` against a scripted fake engine: streaming, prompts, flags, errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from localllm.cli.main import app
from localllm.errors import ModelLoadError, ModelNotFoundError, PromptTooLongError, UnsupportedModelError
from localllm.sampling_params import RequestOutputKind

runner = CliRunner()


def test_streams_answer_to_stdout(fake_engine):
    engine, calls = fake_engine
    result = runner.invoke(app, ["run", "smollm2", "hi"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello, world!\n"
    assert result.stderr == ""
    assert calls[0][0] == "smollm2"
    assert engine.shut_down


def test_each_delta_is_flushed_before_the_next_one(fake_engine):
    engine, _ = fake_engine
    runner.invoke(app, ["run", "smollm2", "hi"])
    assert engine.stdout_seen[:3] == ["Hello", "Hello, ", "Hello, world"]


def test_params_are_delta_with_ollama_like_defaults(fake_engine):
    engine, _ = fake_engine
    runner.invoke(app, ["run", "smollm2", "hi"])
    params = engine.requests[0][1]
    assert params.output_kind is RequestOutputKind.DELTA
    assert params.max_tokens == 512
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (0.8, 0.9, 40, 0.0)
    assert params.repetition_penalty == 1.0 and params.seed is None and params.stop == []


def test_sampling_flags_reach_sampling_params(fake_engine):
    engine, _ = fake_engine
    result = runner.invoke(app, [
        "run", "smollm2", "hi", "--max-tokens", "7", "--temperature", "0", "--top-p", "0.5",
        "--top-k", "3", "--min-p", "0.1", "--seed", "42", "--repetition-penalty", "1.2",
        "--stop", "\n\n", "--stop", "END",
    ])
    assert result.exit_code == 0, result.output
    params = engine.requests[0][1]
    assert params.max_tokens == 7 and params.temperature == 0.0 and params.greedy
    assert (params.top_p, params.top_k, params.min_p, params.seed) == (0.5, 3, 0.1, 42)
    assert params.repetition_penalty == 1.2
    assert params.stop == ["\n\n", "END"]


def test_engine_flags_reach_the_engine(fake_engine):
    _, calls = fake_engine
    result = runner.invoke(app, [
        "run", "./some/model", "hi", "--max-model-len", "256", "--device", "cpu",
        "--dtype", "float32", "--kv-cache-blocks", "64", "--kv-cache-dtype", "bfloat16",
    ])
    assert result.exit_code == 0, result.output
    model, kwargs = calls[0]
    assert model == "./some/model"
    assert kwargs == {"max_model_len": 256, "device": "cpu", "dtype": "float32", "kv_cache_blocks": 64,
                      "kv_cache_dtype": "bfloat16"}


def test_chat_template_applied_with_system(fake_engine):
    engine, _ = fake_engine
    result = runner.invoke(app, ["run", "smollm2", "Name a colour.", "--system", "Be brief."])
    assert result.exit_code == 0, result.output
    assert engine.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
    ]
    assert engine.requests[0][0] == "<system>Be brief.<user>Name a colour.<assistant>"


def test_raw_skips_the_chat_template(fake_engine):
    engine, _ = fake_engine
    result = runner.invoke(app, ["run", "smollm2", "The capital of France is", "--raw"])
    assert result.exit_code == 0, result.output
    assert engine.messages is None
    assert engine.requests[0][0] == "The capital of France is"


def test_model_without_template_gets_the_plain_prompt(fake_engine):
    engine, _ = fake_engine
    engine.chat_template = None
    result = runner.invoke(app, ["run", "base-model", "Once upon", "--system", "ignored"])
    assert result.exit_code == 0, result.output
    assert engine.requests[0][0] == "Once upon"
    assert "--system ignored" in result.stderr
    assert result.stdout == "Hello, world!\n"


@pytest.mark.parametrize("args", [["-"], []])
def test_prompt_from_stdin(fake_engine, args):
    engine, _ = fake_engine
    result = runner.invoke(app, ["run", "smollm2", *args, "--raw"], input="piped prompt\n")
    assert result.exit_code == 0, result.output
    assert engine.requests[0][0] == "piped prompt"


def test_empty_prompt_is_an_error(fake_engine):
    result = runner.invoke(app, ["run", "smollm2", "-"], input="  \n")
    assert result.exit_code == 1
    assert result.stderr == "error: the prompt is empty\n"


def test_answer_already_ending_in_newline_gets_no_extra_one(fake_engine):
    engine, _ = fake_engine
    engine.chunks = ["one\n"]
    result = runner.invoke(app, ["run", "smollm2", "hi"])
    assert result.stdout == "one\n"


@pytest.mark.parametrize("error", [
    ModelNotFoundError("nope", "did you mean 'smollm2'?"),
    UnsupportedModelError("/m", "MambaForCausalLM", ["LlamaForCausalLM"]),
    ModelLoadError("/m/model.gguf", "truncated file: expected 100 bytes, found 10"),
])
def test_load_errors_are_one_line_and_exit_1(fake_engine, error):
    engine, _ = fake_engine
    engine.load_error = error
    result = runner.invoke(app, ["run", "whatever", "hi"])
    assert result.exit_code == 1
    assert result.stderr == f"error: {error}\n"
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_unknown_model_through_the_real_resolver(monkeypatch):
    import localllm.cli.run as run_module
    from localllm.hub import resolve_model

    monkeypatch.setattr(run_module, "_make_engine", lambda model, **kw: resolve_model(model))
    result = runner.invoke(app, ["run", "no-such-model-xyz", "hi"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: model 'no-such-model-xyz' not found: ")
    assert result.stderr.count("\n") == 1


def test_prompt_too_long_is_one_line_and_exit_1(fake_engine):
    engine, _ = fake_engine
    engine.generate_error = PromptTooLongError(5000, 2048)
    result = runner.invoke(app, ["run", "smollm2", "long prompt"])
    assert result.exit_code == 1
    assert result.stderr == "error: prompt has 5000 tokens, more than max_model_len 2048 allows\n"
    assert result.stdout == ""
    assert engine.shut_down


def test_bad_sampling_value_is_one_line(fake_engine):
    _, calls = fake_engine
    result = runner.invoke(app, ["run", "smollm2", "hi", "--top-p", "0"])
    assert result.exit_code == 1
    assert result.stderr == "error: top_p must be in (0, 1], got 0.0\n"
    assert calls == []  # checked before loading the model


def test_bad_engine_config_value_is_one_line(fake_engine):
    engine, _ = fake_engine
    engine.load_error = ValueError("dtype must be one of ('auto', 'float32'), got 'int3'")
    result = runner.invoke(app, ["run", "smollm2", "hi", "--dtype", "int3"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: dtype must be one of")


def test_ctrl_c_aborts_the_request(fake_engine):
    engine, _ = fake_engine
    engine.interrupt_after = 2
    result = runner.invoke(app, ["run", "smollm2", "hi"])
    assert result.exit_code == 130
    assert result.stdout == "Hello, \n"
    assert result.stderr == "aborted\n"
    assert engine.aborted == [engine.requests[0][2]]
    assert engine.shut_down


def test_verbose_prints_stats_on_stderr_only(fake_engine):
    result = runner.invoke(app, ["run", "smollm2", "hi", "--verbose"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello, world!\n"
    assert "time to first token:" in result.stderr
    assert "generated:" in result.stderr and "4 tokens" in result.stderr
    assert "finish reason: length" in result.stderr


_SIGINT_SCRIPT = r'''
import asyncio, signal, sys
# A terminal's Ctrl-C, even when the suite itself runs as a background job (where the shell hands
# its children SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, sys.argv[1])
from tests.cli.conftest import FakeEngine
import localllm.cli.run as run_module
from localllm.cli.main import app

class SlowEngine(FakeEngine):
    async def generate(self, prompt, params, request_id):
        async for out in super().generate(prompt, params, request_id):
            yield out
            await asyncio.sleep(60)

    async def abort(self, request_id):
        print("engine: aborted", request_id, file=sys.stderr, flush=True)

    def shutdown(self):
        print("engine: shut down", file=sys.stderr, flush=True)

run_module._make_engine = lambda model, **kw: SlowEngine()
app(["run", "smollm2", "hi"], prog_name="localllm")
'''


@pytest.mark.skipif(__import__("sys").platform == "win32", reason="POSIX signals")
def test_real_sigint_aborts_and_exits_130(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    script = tmp_path / "slow_run.py"
    script.write_text(_SIGINT_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(here.parents[1]))
    proc = subprocess.Popen([sys.executable, str(script), str(here)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdout.read(5) == b"Hello"  # the first delta arrived, flushed
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err.decode()
    assert out == b"\n"
    err = err.decode()
    assert "engine: aborted run-" in err and "engine: shut down" in err
    assert "\naborted\n" in err and "Traceback" not in err
