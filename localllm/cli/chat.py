"""`localllm chat [MODEL]`: the terminal chat. The engine runs in this process (loading behind
the UI), or `--url` talks to a running `localllm serve`. Textual and the engine are imported
inside the command, so `localllm --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from localllm.cli.common import fail
from localllm.cli.run import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P

DEFAULT_MODEL = "smollm2"


def _make_backend(model: Optional[str], url: Optional[str], engine_args: dict[str, Any]):
    """Build what the chat streams from; tests replace this with a scripted one."""
    if url is not None:
        from localllm.tui.http_backend import HttpBackend

        return HttpBackend(url, model)
    from localllm.tui.engine_backend import EngineBackend

    return EngineBackend(model or DEFAULT_MODEL, engine_args)


def _sampling(help: str, *names: str):
    return typer.Option(*names, help=help, rich_help_panel="Sampling (new chats)")


def _engine(help: str, *names: str):
    return typer.Option(*names, help=help, rich_help_panel="Engine")


def chat(
    model: Annotated[Optional[str], typer.Argument(
        help="Alias, model directory, .gguf file or org/repo (default: smollm2; with --url: the server's first model).",
        show_default=False)] = None,
    url: Annotated[Optional[str], typer.Option("--url", help="A running `localllm serve`, e.g. http://127.0.0.1:8000.")] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt of new chats.")] = None,
    resume: Annotated[bool, typer.Option("--continue", "-c", help="Reopen the chat used last.")] = False,
    chat_id: Annotated[Optional[int], typer.Option("--chat", help="Reopen the saved chat with this id.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(
        "--data-dir", help="Where chats are kept (default: $LOCALLLM_HOME, else the user data directory).")] = None,
    max_tokens: Annotated[int, _sampling("Most tokens per answer.", "--max-tokens", "-n")] = DEFAULT_MAX_TOKENS,
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
) -> None:
    """Chat with MODEL in the terminal: streamed Markdown answers, saved chats, live engine figures."""
    from localllm.tui.settings import ChatSettings

    try:
        settings = ChatSettings(
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
            repetition_penalty=repetition_penalty, max_tokens=max_tokens, seed=seed, stop=tuple(stop or ()),
        ).validated()
    except ValueError as e:
        fail(str(e))
    if resume and chat_id is not None:
        fail("--continue and --chat are exclusive")
    engine_args = {"max_model_len": max_model_len, "device": device, "dtype": dtype, "kv_cache_blocks": kv_cache_blocks,
                   "kv_cache_dtype": kv_cache_dtype}

    from localllm.tui.app import LATEST, ChatApp
    from localllm.tui.store import ChatStore

    try:
        store = ChatStore(data_dir)
    except Exception as e:  # noqa: BLE001 - an unreadable or newer database: one line, exit 1
        fail(f"cannot open the chat store: {e}")
    backend = _make_backend(model, url, engine_args)
    if url is None:
        from localllm.tui.engine_backend import display_name

        label = display_name(model or DEFAULT_MODEL)
    else:
        label = model or url  # the server names its model once it answers
    app = ChatApp(backend, model_label=label, store=store, system=system, settings=settings,
                  open_chat=LATEST if resume else chat_id)
    app.run()
