"""`localllm bench throughput|latency|serve`: the figures users choose an engine by, measured the
way vLLM's benchmark scripts measure them, peers side by side (`--vs hf`, `--vs llama.cpp`).
Tables go to stdout, progress and notes to stderr; torch and the engine load inside commands."""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from typing import Annotated, Optional

import typer

from localllm.cli.common import EXIT_INTERRUPTED, fail

app = typer.Typer(
    help="Benchmarks: offline throughput and latency (peers side by side with --vs), and serving "
         "against any OpenAI-compatible server.",
    no_args_is_help=True,
)

ModelArg = Annotated[str, typer.Argument(help="Alias (smollm2, ...), model directory, .gguf file or org/repo.")]
InputLen = Annotated[int, typer.Option("--input-len", help="Prompt tokens per request.")]
OutputLen = Annotated[int, typer.Option("--output-len", help="Tokens generated per request (EOS ignored).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the prompts: the same seed gives the same prompts.")]
JsonPath = Annotated[Optional[str], typer.Option("--json", help="Write the full record (machine, versions, command, figures) here.")]
Vs = Annotated[
    Optional[list[str]],
    typer.Option("--vs", help="Also run the workload on a peer, in this process: hf (transformers) or llama.cpp. Repeatable."),
]


def _engine(help: str, *names: str):
    return typer.Option(*names, help=help, rich_help_panel="Engine")


MaxModelLen = Annotated[Optional[int], _engine("Context length (default: the model's).")]
MaxNumSeqs = Annotated[int, _engine("Most sequences the engine runs at once (also transformers' batch size).")]
Device = Annotated[str, _engine("auto, cpu, cuda or cuda:N.")]
Dtype = Annotated[str, _engine("auto, float32, float16 or bfloat16.")]
Quantization = Annotated[str, _engine("auto (int4 for a 4-bit GGUF on the CPU), int4 or none.")]
KvCacheBlocks = Annotated[Optional[int], _engine("KV cache size in blocks (default: from memory).")]
KvCacheDtype = Annotated[str, _engine("KV cache dtype: auto (the model's; bfloat16 for int4 on the CPU), float32 or bfloat16.")]


# Options every offline command takes: --vs, --seed, --json and the engine's (name, type, default).
_COMMON = (
    ("vs", Vs, None), ("seed", Seed, 0), ("json_path", JsonPath, None), ("max_model_len", MaxModelLen, None),
    ("max_num_seqs", MaxNumSeqs, 64), ("device", Device, "auto"), ("dtype", Dtype, "auto"),
    ("quantization", Quantization, "auto"), ("kv_cache_blocks", KvCacheBlocks, None),
    ("kv_cache_dtype", KvCacheDtype, "auto"),
)


def _offline_command(name: str):
    """Register an offline command: it declares its own options and receives the common ones as
    one dict, `common`."""

    def register(fn):
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "common"]
        extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for n, a, d in _COMMON]

        @functools.wraps(fn)
        def command(**options):
            common = {n: options.pop(n) for n, _, _ in _COMMON}
            return fn(**options, common=common)

        command.__signature__ = inspect.Signature(own + extra)
        app.command(name)(command)
        return fn

    return register


@_offline_command("throughput")
def throughput(
    model: ModelArg = "smollm2",
    num_prompts: Annotated[int, typer.Option("--num-prompts", help="Requests, all submitted at once.")] = 64,
    input_len: InputLen = 128,
    output_len: OutputLen = 128,
    common: dict | None = None,
) -> None:
    """Offline throughput: NUM_PROMPTS requests at once; requests/s, input and output tokens/s."""
    _offline("throughput", model, (num_prompts, input_len, output_len), common)


@_offline_command("latency")
def latency(
    model: ModelArg = "smollm2",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Requests in each timed batch.")] = 1,
    input_len: InputLen = 32,
    output_len: OutputLen = 128,
    num_iters: Annotated[int, typer.Option("--num-iters", help="Timed batches.")] = 3,
    num_iters_warmup: Annotated[int, typer.Option("--num-iters-warmup", help="Untimed batches first.")] = 1,
    common: dict | None = None,
) -> None:
    """Latency of a batch: time per request, TTFT, time per output token, memory, fraction of the bandwidth floor."""
    if batch_size < 1:
        fail(f"--batch-size must be a positive integer, got {batch_size}")
    if num_iters < 1 or num_iters_warmup < 0:
        fail(f"--num-iters must be >= 1 and --num-iters-warmup >= 0, got {num_iters} and {num_iters_warmup}")
    if batch_size > common["max_num_seqs"]:
        fail(f"--batch-size {batch_size} is more than --max-num-seqs {common['max_num_seqs']}: the batch would not run at once")
    num_prompts = batch_size * (num_iters + num_iters_warmup)
    _offline("latency", model, (num_prompts, input_len, output_len), common, batch_size, num_iters, num_iters_warmup)


def _offline(kind: str, model: str, shape: tuple, common: dict, batch_size: int = 1, num_iters: int = 1,
             num_iters_warmup: int = 0) -> None:
    from localllm.bench.backends import PEERS
    from localllm.bench.workload import Workload
    from localllm.errors import LocalLLMError

    engine_options = dict(common)
    vs, seed, json_path = (engine_options.pop(k) for k in ("vs", "seed", "json_path"))
    peers = list(dict.fromkeys(vs or []))
    for peer in peers:
        if peer not in PEERS:
            fail(f"--vs must be one of {', '.join(PEERS)}, got {peer!r}")
    if engine_options["quantization"] not in ("auto", "int4", "none"):
        fail(f"--quantization must be auto, int4 or none, got {engine_options['quantization']!r}")
    try:
        workload = Workload(*shape, seed=seed)
    except ValueError as e:
        fail(str(e))
    from localllm.bench.offline import run_offline
    from localllm.bench.report import latency_report, throughput_report

    try:
        record = run_offline(kind, model, workload, peers=peers, engine_options=engine_options, batch_size=batch_size,
                             num_iters=num_iters, num_iters_warmup=num_iters_warmup, log=_note)
    except (LocalLLMError, ValueError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        _note("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED)
    typer.echo((throughput_report if kind == "throughput" else latency_report)(record))
    _save(record, json_path)


@app.command("serve")
def serve(
    url: Annotated[str, typer.Option("--url", help="The server's base URL.")] = "http://127.0.0.1:8000",
    model: Annotated[Optional[str], typer.Option("--model", help="Model name to request (default: the first the server lists).")] = None,
    endpoint: Annotated[str, typer.Option("--endpoint", help="completions (/v1/completions) or chat (/v1/chat/completions).")] = "completions",
    num_prompts: Annotated[int, typer.Option("--num-prompts", help="Requests at each concurrency (or rate).")] = 32,
    input_len: Annotated[int, typer.Option("--input-len", help="Prompt length in words (about a token each).")] = 128,
    output_len: OutputLen = 128,
    concurrency: Annotated[
        Optional[str], typer.Option("--concurrency", help="Clients in a closed loop; a list (1,4,16) runs one point each. With --rate: a cap.")
    ] = None,
    rate: Annotated[Optional[str], typer.Option("--rate", help="Poisson arrivals, requests/s; a list runs one point each.")] = None,
    seed: Seed = 0,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="LOCALLLM_API_KEY", help="Bearer key for the server.")] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos/--no-ignore-eos", help="Send vLLM's ignore_eos (servers without it: --no-ignore-eos).")] = True,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds a request may take.")] = 600.0,
    json_path: Annotated[Optional[str], typer.Option("--json", help="Result file (default: bench-serve-DATE.json here).")] = None,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Draw throughput and TTFT percentiles against concurrency to this PNG.")] = None,
) -> None:
    """Benchmark any OpenAI-compatible server: TTFT, inter-token and end-to-end latency (mean, p50, p90, p99), throughput."""
    from localllm.bench.serve_client import ENDPOINTS, ServeBenchError, ServeTarget, check_server, list_models, run_sweep
    from localllm.bench.workload import Workload
    from localllm.errors import LocalLLMError

    url = url.rstrip("/").removesuffix("/v1")
    if not url.startswith(("http://", "https://")):
        fail(f"--url must start with http:// or https://, got {url!r}")
    if endpoint not in ENDPOINTS:
        fail(f"--endpoint must be one of {', '.join(ENDPOINTS)}, got {endpoint!r}")
    if timeout <= 0:
        fail(f"--timeout must be > 0, got {timeout}")
    if plot is not None and not plot.lower().endswith(".png"):
        fail(f"--plot writes a PNG: give a file name ending in .png, got {plot!r}")
    points = _points(concurrency, rate)
    try:
        workload = Workload(num_prompts, input_len, output_len, seed)
    except ValueError as e:
        fail(str(e))
    try:
        served = asyncio.run(list_models(url, api_key, required=model is None))
        if model is None:
            if not served:
                fail(f"{url}/v1/models lists no model: pass one with --model")
            model = served[0]
        target = ServeTarget(url, model, endpoint, api_key, ignore_eos, timeout)
        asyncio.run(check_server(target, workload))
        figures = _run_with_progress(lambda on_point: run_sweep(target, workload, points, on_point), num_prompts)
    except (ServeBenchError, LocalLLMError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        _note("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED)
    from localllm.bench.record import new_record
    from localllm.bench.report import serve_report

    record = new_record("serve", workload.as_dict(), url=url, endpoint_path=ENDPOINTS[endpoint], model=model,
                        served_models=served, ignore_eos=ignore_eos, points=figures)
    typer.echo(serve_report(record))
    _save(record, json_path or time.strftime("bench-serve-%Y%m%d-%H%M%S.json"))
    if plot:
        from localllm.bench.plot import plot_serve

        try:
            plot_serve(record, plot)
        except LocalLLMError as e:
            fail(str(e))
        _note(f"plot: {plot}")


def _points(concurrency: str | None, rate: str | None) -> list[tuple[int | None, float | None]]:
    concurrencies = _numbers("--concurrency", concurrency, int) if concurrency else None
    if rate is None:
        return [(c, None) for c in (concurrencies or [1])]
    if concurrencies and len(concurrencies) > 1:
        fail("with --rate, --concurrency is one cap (a single number)")
    cap = concurrencies[0] if concurrencies else None
    return [(cap, r) for r in _numbers("--rate", rate, float)]


def _numbers(flag: str, text: str, kind) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        fail(f"{flag} takes positive numbers separated by commas, got {text!r}")
    if not values or any(v <= 0 for v in values):
        fail(f"{flag} takes positive numbers separated by commas, got {text!r}")
    return values


def _run_with_progress(sweep, num_prompts: int) -> list[dict]:
    """Run the sweep under a progress bar on stderr (drawn once at the end when it is not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        def on_point(index: int, concurrency: int | None, rate: float | None):
            label = f"rate {rate:g}/s" if rate else f"concurrency {concurrency}"
            task = progress.add_task(label, total=num_prompts)
            return lambda: progress.advance(task)

        return asyncio.run(sweep(on_point))


def _save(record: dict, path: str | None) -> None:
    if path:
        from localllm.bench.record import write_json

        try:
            write_json(record, path)
        except OSError as e:
            fail(f"cannot write {path}: {e.strerror or e}")
        _note(f"results: {path}")


def _note(message: str) -> None:
    typer.echo(message, err=True)
