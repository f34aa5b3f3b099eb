"""Helpers every command shares: one-line errors, prompt input, exit codes."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print `error: MESSAGE` on stderr and exit; no traceback."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def read_prompt(prompt: str | None) -> str:
    """The prompt argument, or stdin when it is `-` (or absent with stdin piped in). One trailing
    newline, as `echo` adds, is dropped."""
    if prompt is None or prompt == "-":
        if prompt is None and sys.stdin.isatty():
            fail("no prompt given: pass PROMPT, or `-` to read it from stdin")
        text = sys.stdin.read()
        if text.endswith("\n"):
            text = text[:-1].removesuffix("\r")
    else:
        text = prompt
    if not text.strip():
        fail("the prompt is empty")
    return text


def write_out(text: str) -> None:
    """Write to stdout and flush at once (the answer streams); survive terminals that cannot
    encode some characters."""
    out = sys.stdout
    try:
        out.write(text)
    except UnicodeEncodeError:
        encoding = getattr(out, "encoding", None) or "utf-8"
        out.write(text.encode(encoding, "replace").decode(encoding))
    out.flush()


def build_engine(model: str, **engine_args):
    """The AsyncLLM for `model` (run, serve). A Hub name not yet in the store is pulled first,
    with rich bars for its bytes and any quantization on stderr; a local name loads at once."""
    from localllm.engine.async_llm import AsyncLLM
    from localllm.hub.bars import PullBars
    from localllm.hub.pull import ensure_model

    with PullBars() as bars:
        ensure_model(model, device=engine_args.get("device", "auto"), log=bars.log, progress=bars)
    return AsyncLLM(model=model, **engine_args)
