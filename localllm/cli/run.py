"""`localllm run MODEL [PROMPT]`: one prompt in, the answer streamed to stdout.

Sampling defaults follow Ollama (temperature 0.8, top-p 0.9, top-k 40) with the repetition
penalty off (1.0, as in vLLM and transformers), so `--temperature 0` gives the model's own
greedy answer. The engine (and torch) load inside the command, never at import time.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Optional

import typer

from localllm.cli.common import EXIT_INTERRUPTED, build_engine, fail, read_prompt, write_out

DEFAULT_MAX_TOKENS = 512
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.9
DEFAULT_TOP_K = 40


# Builds the engine (pulling a Hub model first, with progress bars); tests replace it with a fake.
_make_engine = build_engine


@dataclass
class _Stats:
    start: float = 0.0
    first_token: float | None = None
    end: float | None = None
    load_seconds: float = 0.0
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    finish_reason: str | None = None
    wrote_any: bool = False
    ends_with_newline: bool = False


def _sampling(help: str, *names: str):
    return typer.Option(*names, help=help, rich_help_panel="Sampling")


def _engine(help: str, *names: str):
    return typer.Option(*names, help=help, rich_help_panel="Engine")


def run(
    model: Annotated[
        str, typer.Argument(help="Alias (smollm2, qwen2.5-0.5b, ...), model directory, .gguf file or org/repo.")
    ],
    prompt: Annotated[Optional[str], typer.Argument(help="The prompt; `-` reads it from stdin.")] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System message (chat models).")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Plain completion: no chat template.")] = False,
    max_tokens: Annotated[int, _sampling("Most tokens to generate.", "--max-tokens", "-n")] = DEFAULT_MAX_TOKENS,
    temperature: Annotated[float, _sampling("0 = greedy.")] = DEFAULT_TEMPERATURE,
    top_p: Annotated[float, _sampling("Nucleus sampling (1 = off).")] = DEFAULT_TOP_P,
    top_k: Annotated[int, _sampling("Keep the k likeliest tokens (0 = off).")] = DEFAULT_TOP_K,
    min_p: Annotated[float, _sampling("Drop tokens below min_p x the top probability.")] = 0.0,
    repetition_penalty: Annotated[float, _sampling("> 1 discourages repeats (1 = off).")] = 1.0,
    seed: Annotated[Optional[int], _sampling("Seed for reproducible sampling.")] = None,
    stop: Annotated[Optional[list[str]], _sampling("Stop at this string (repeatable).", "--stop")] = None,
    max_model_len: Annotated[Optional[int], _engine("Context length (default: the model's).")] = None,
    device: Annotated[str, _engine("auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, _engine("auto, float32, float16 or bfloat16.")] = "auto",
    kv_cache_blocks: Annotated[Optional[int], _engine("KV cache size in blocks (default: from memory).")] = None,
    kv_cache_dtype: Annotated[str, _engine("KV cache dtype: auto (the model's; bfloat16 for int4 on the CPU), float32 or bfloat16.")] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print timings and token counts on stderr.")] = False,
) -> None:
    """Run MODEL on one PROMPT and stream the answer to stdout."""
    from localllm.errors import LocalLLMError
    from localllm.sampling_params import RequestOutputKind, SamplingParams

    text = read_prompt(prompt)
    try:
        params = SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
            repetition_penalty=repetition_penalty, seed=seed, stop=list(stop or []),
            output_kind=RequestOutputKind.DELTA,
        )
    except ValueError as e:
        fail(str(e))

    stats = _Stats()
    engine = None
    try:
        t0 = time.perf_counter()
        try:
            engine = _make_engine(
                model, max_model_len=max_model_len, device=device, dtype=dtype, kv_cache_blocks=kv_cache_blocks,
                kv_cache_dtype=kv_cache_dtype,
            )
        except ValueError as e:  # the engine's config checks: bad --dtype, --device, ...
            fail(str(e))
        stats.load_seconds = time.perf_counter() - t0
        full_prompt = _build_prompt(engine, text, system, raw)
        asyncio.run(_stream(engine, full_prompt, params, f"run-{uuid.uuid4().hex}", stats))
    except LocalLLMError as e:
        _end_line(stats)
        fail(str(e))
    except KeyboardInterrupt:
        _end_line(stats)
        typer.echo("aborted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    except BrokenPipeError:  # `localllm run ... | head -1`: the reader left; stop quietly
        _silence_stdout()
        raise typer.Exit(0)
    finally:
        if engine is not None:
            engine.shutdown()
    _end_line(stats, always=True)
    if verbose:
        _print_stats(stats)


def _build_prompt(engine, text: str, system: str | None, raw: bool) -> str:
    if raw or engine.chat_template is None:
        if system is not None:
            why = "--raw" if raw else "the model has no chat template"
            typer.echo(f"warning: --system ignored ({why})", err=True)
        return text
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": text})
    try:
        return engine.render_chat(messages)
    except Exception as e:
        from jinja2.exceptions import TemplateError

        if isinstance(e, TemplateError):
            fail(f"the model's chat template failed: {e}")
        raise


async def _stream(engine, prompt: str, params, request_id: str, stats: _Stats) -> None:
    """Write each delta to stdout as it arrives; abort the request if interrupted."""
    stats.start = time.perf_counter()
    try:
        async for out in engine.generate(prompt, params, request_id):
            completion = out.outputs[0]
            if stats.first_token is None and (completion.token_ids or completion.text):
                stats.first_token = time.perf_counter()
            stats.num_prompt_tokens = len(out.prompt_token_ids)
            stats.num_generated_tokens += len(completion.token_ids)
            if completion.text:
                write_out(completion.text)
                stats.wrote_any = True
                stats.ends_with_newline = completion.text.endswith("\n")
            if out.finished:
                stats.finish_reason = completion.finish_reason
    except (asyncio.CancelledError, KeyboardInterrupt, BrokenPipeError):
        # NOTE: Ctrl-C reaches us as CancelledError (asyncio.run cancels the main task) or as
        # KeyboardInterrupt; either way the engine must drop the request and free its blocks.
        await engine.abort(request_id)
        raise
    finally:
        stats.end = time.perf_counter()


def _end_line(stats: _Stats, always: bool = False) -> None:
    """The answer ends with a newline, even when cut short (`always`: even when empty)."""
    if not stats.ends_with_newline and (stats.wrote_any or always):
        try:
            write_out("\n")
        except BrokenPipeError:
            _silence_stdout()
        stats.ends_with_newline = True


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit-time flush does not raise again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _print_stats(stats: _Stats) -> None:
    end = stats.end or time.perf_counter()
    rows = [("load time", f"{stats.load_seconds:.2f} s")]
    if stats.first_token is not None:
        ttft = stats.first_token - stats.start
        rate = f", {stats.num_prompt_tokens / ttft:.1f} tok/s" if ttft > 0 else ""
        rows.append(("time to first token", f"{ttft:.3f} s ({stats.num_prompt_tokens} prompt tokens{rate})"))
        decode_seconds = end - stats.first_token
        rate = ""
        if stats.num_generated_tokens > 1 and decode_seconds > 0:
            rate = f", {(stats.num_generated_tokens - 1) / decode_seconds:.1f} tok/s"
        rows.append(("generated", f"{stats.num_generated_tokens} tokens{rate}"))
    rows.append(("total time", f"{end - stats.start:.2f} s (finish reason: {stats.finish_reason})"))
    typer.echo("\n".join(f"{label + ':':<21}{value}" for label, value in rows), err=True)
