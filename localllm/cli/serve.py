"""`localllm serve [MODEL]`: the OpenAI and Ollama APIs over one engine, on 127.0.0.1:8000 by
default. The engine, torch, FastAPI and uvicorn load inside the command."""

from __future__ import annotations

import signal
import socket
from typing import Annotated, Optional

import typer

from localllm.cli.common import build_engine, fail

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_QUEUE = 256


# Builds the engine (pulling a Hub model first, with progress bars); tests replace it with a fake.
_make_engine = build_engine


def _listen(host: str, port: int) -> socket.socket:
    """Bind before loading the model, so a taken port fails at once with a clear message."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        fail(f"cannot listen on {host}:{port}: {e.strerror or e}")
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _engine(help: str, *names: str):
    return typer.Option(*names, help=help, rich_help_panel="Engine")


def serve(
    model: Annotated[str, typer.Argument(help="Alias (smollm2, qwen2.5-0.5b, ...), model directory, .gguf file or org/repo.")] = "smollm2",
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port (Ollama clients expect 11434).")] = DEFAULT_PORT,
    api_key: Annotated[
        Optional[str],
        typer.Option("--api-key", envvar="LOCALLLM_API_KEY", help="Require `Authorization: Bearer KEY` (env: LOCALLLM_API_KEY)."),
    ] = None,
    served_model_name: Annotated[
        Optional[list[str]], typer.Option("--served-model-name", help="Name(s) clients use for the model (repeatable; default: MODEL).")
    ] = None,
    max_queue: Annotated[int, typer.Option(help="Sequences that may wait beyond --max-num-seqs before requests get 429.")] = DEFAULT_MAX_QUEUE,
    allowed_origins: Annotated[
        Optional[list[str]],
        typer.Option(
            "--allowed-origins", envvar="LOCALLLM_ALLOWED_ORIGINS",
            help="Web origins whose pages may call the API (CORS): http://localhost:3000, http://localhost:*, or * "
            "(repeatable or comma-separated; default: none, same-origin only).",
        ),
    ] = None,
    max_model_len: Annotated[Optional[int], _engine("Context length (default: the model's).")] = None,
    max_num_seqs: Annotated[int, _engine("Most sequences the engine runs at once.")] = 64,
    device: Annotated[str, _engine("auto, cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, _engine("auto, float32, float16 or bfloat16.")] = "auto",
    quantization: Annotated[str, _engine("auto (int4 for a 4-bit GGUF on the CPU), int4 or none.")] = "auto",
    kv_cache_blocks: Annotated[Optional[int], _engine("KV cache size in blocks (default: from memory).")] = None,
    kv_cache_dtype: Annotated[str, _engine("KV cache dtype: auto (the model's; bfloat16 for int4 on the CPU), float32 or bfloat16.")] = "auto",
    log_level: Annotated[str, typer.Option(help="uvicorn's log level: debug, info, warning, error.")] = "info",
) -> None:
    """Serve MODEL over HTTP: the OpenAI API under /v1 and the Ollama API under /api."""
    if not 0 < port < 65536:
        fail(f"--port must be in 1..65535, got {port}")
    if max_queue < 0:
        fail(f"--max-queue must be >= 0, got {max_queue}")
    if quantization not in ("auto", "int4", "none"):
        fail(f"--quantization must be auto, int4 or none, got {quantization!r}")
    from localllm.server.cors import parse_origins

    try:
        origins = parse_origins(allowed_origins or [])
    except ValueError as e:
        fail(f"--allowed-origins: {e}")
    sock = _listen(host, port)
    from localllm.errors import LocalLLMError

    typer.echo(f"loading {model} ...", err=True)
    try:
        llm = _make_engine(
            model, max_model_len=max_model_len, max_num_seqs=max_num_seqs, device=device, dtype=dtype,
            quantization=None if quantization == "none" else quantization, kv_cache_blocks=kv_cache_blocks,
            kv_cache_dtype=kv_cache_dtype,
        )
    except (LocalLLMError, ValueError) as e:
        sock.close()
        fail(str(e))
    try:
        _run(llm, model, sock, host, port, api_key, served_model_name or [], max_num_seqs + max_queue, origins, log_level)
    finally:
        llm.shutdown()


def _run(llm, model: str, sock: socket.socket, host: str, port: int, api_key: str | None, names: list[str],
         max_pending_seqs: int, allowed_origins: tuple[str, ...], log_level: str) -> None:
    import uvicorn

    from localllm.server import ServerSettings, create_app, describe_model

    name = names[0] if names else model
    info = describe_model(llm, name, tuple(names[1:]))
    settings = ServerSettings(api_key=api_key, max_pending_seqs=max_pending_seqs, allowed_origins=allowed_origins)
    app = create_app(llm, info, settings)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        f"serving {name} on http://{shown}:{port} (OpenAI API: /v1, Ollama API: /api, metrics: /metrics)"
        + (", API key required" if api_key else "")
        + (f", CORS for {', '.join(allowed_origins)}" if allowed_origins else ""),
        err=True,
    )
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5, access_log=log_level == "debug")
    # NOTE: uvicorn shuts down gracefully on Ctrl-C / SIGTERM, then raises the signal again; a
    # server stopped on request has done its job, so both end here with exit code 0.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    typer.echo("server stopped", err=True)

