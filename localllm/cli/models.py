"""Model commands: pull, list, show, rm, ps, doctor. Tables and answers go to stdout; progress,
notes and warnings to stderr; errors are one line (`error: ...`, exit 1). Heavy imports (torch
for doctor and for planning a pull, huggingface_hub for downloads) happen inside the commands."""

from __future__ import annotations

import json
import platform
import time
from typing import Annotated, Optional

import typer

from localllm.cli.common import EXIT_INTERRUPTED, fail
from localllm.hub.pull import DEFAULT_CONTEXT

DEFAULT_PS_URL = "http://127.0.0.1:8000"


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _table(rows: list[list[str]], headers: list[str] | None = None) -> str:
    """Left-aligned columns, three spaces apart (Ollama's look)."""
    every = [headers, *rows] if headers else rows
    widths = [max(len(str(r[i])) for r in every) for i in range(len(every[0]))] if every else []
    return "\n".join("   ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in every)


def _ago(seconds: float) -> str:
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


def _size(num_bytes: int) -> str:
    """Decimal units, as Ollama prints them: 5.7 GB, 98 MB, 12 KB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if num_bytes >= scale:
            value = f"{num_bytes / scale:.1f}"
            return (value[:-2] if value.endswith(".0") else value) + f" {unit}"
    return f"{num_bytes} B"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _quant_label(quantization: str) -> str:
    if quantization.startswith("gguf:"):
        return "GGUF " + quantization[5:]
    return {"awq": "AWQ int4", "gptq": "GPTQ int4"}.get(quantization, quantization.upper())


# ---------------------------------------------------------------- pull


def pull(
    name: Annotated[str, typer.Argument(help="Alias[:tag], org/repo, or hf.co/org/repo:QUANT.")],
    quantization: Annotated[
        str, typer.Option("--quantization", "-q", help="auto (the memory planner picks), bf16, fp8, awq, gptq or gguf.")
    ] = "auto",
    revision: Annotated[Optional[str], typer.Option(help="Branch, tag or commit on the Hub (default: main).")] = None,
    context: Annotated[int, typer.Option(help="Context length (tokens) the planner keeps room for.")] = DEFAULT_CONTEXT,
) -> None:
    """Download a model into the local store (resumes an interrupted pull)."""
    from localllm.errors import LocalLLMError
    from localllm.hub.bars import PullBars
    from localllm.hub.pull import pull as pull_model

    try:
        with PullBars() as bars:
            result = pull_model(name, quantization, revision=revision, context=context, log=bars.log,
                                progress=bars)
    except (LocalLLMError, ValueError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        _err(f"interrupted: `localllm pull {name}` resumes where this stopped")
        raise typer.Exit(EXIT_INTERRUPTED)
    for note in result.notes:
        _err(note)
    manifest = result.entry.manifest
    verb = "pulled" if result.downloaded else "in the store:"
    typer.echo(f"{verb} {manifest.display_name}: {_quant_label(manifest.quantization)}, {_size(manifest.size)}")


# ---------------------------------------------------------------- list / show / rm


def list_models() -> None:
    """List the models in the local store."""
    from localllm.hub.store import default_store

    store = default_store()
    problems: list[str] = []
    entries = store.entries(problems)
    now = time.time()
    rows = [
        [e.manifest.display_name, _quant_label(e.manifest.quantization), _size(e.manifest.size), _ago(now - e.modified)]
        for e in entries
    ]
    typer.echo(_table(rows, ["NAME", "QUANTIZATION", "SIZE", "MODIFIED"]))
    for problem in problems:
        _err(f"warning: skipped {problem}")
    for partial in store.partials():
        shown = partial.name.replace("--", "/").replace("@", ":")
        _err(f"incomplete (not listed): {shown}; `localllm pull {shown}` resumes it, `localllm rm {shown}` drops it")


def show(
    name: Annotated[str, typer.Argument(help="A model in the store, an alias, a directory or a .gguf file.")],
    template: Annotated[bool, typer.Option("--template", help="Print only the chat template.")] = False,
) -> None:
    """Show a local model: architecture, parameters, context length, quantization, template, files."""
    from localllm.errors import LocalLLMError
    from localllm.hub.describe import describe
    from localllm.hub.resolve import resolve_model

    try:
        path = resolve_model(name)
        info = describe(path)
        manifest = _manifest_of(path)
    except LocalLLMError as e:
        fail(str(e))
    if template:
        if info.chat_template is None:
            fail(f"{name}: the model has no chat template")
        typer.echo(info.chat_template)
        return
    params = "unknown" if info.parameters is None else ("~" if info.parameters_estimated else "") + _count(info.parameters)
    rows = [["name", manifest.display_name if manifest else name]]
    if manifest is not None:
        rows += [["source", f"{manifest.repo} @ {manifest.revision[:12]}"], ["pulled", manifest.created or "?"]]
    rows += [
        ["architecture", info.architecture],
        ["parameters", params],
        ["context length", str(info.context_length or "unknown")],
        ["quantization", info.quantization],
        ["size", _size(sum(size for _, size in info.files))],
        ["path", info.path],
    ]
    typer.echo(_table(rows))
    typer.echo("\nchat template")
    if info.chat_template is None:
        typer.echo("  none (plain completion only)")
    else:
        lines = info.chat_template.strip().splitlines()
        typer.echo("\n".join("  " + line for line in lines[:6]))
        if len(lines) > 6:
            typer.echo(f"  ... ({len(lines) - 6} more lines; `localllm show {name} --template` prints it all)")
    typer.echo("\nfiles")
    typer.echo(_table([[f"  {p}", _size(s)] for p, s in info.files]))


def _manifest_of(path: str):
    """The manifest when `path` lies in a store entry (the entry itself or its .gguf file)."""
    from pathlib import Path

    from localllm.hub.store import default_store

    store = default_store()
    p = Path(path)
    directory = p if p.is_dir() else p.parent
    while directory.parent != store.models and directory != directory.parent:
        directory = directory.parent
    if directory.parent != store.models:
        return None
    for entry in store.entries():
        if entry.directory == directory:
            return entry.manifest
    return None


def rm(names: Annotated[list[str], typer.Argument(help="Models in the store (name or name:tag).")]) -> None:
    """Remove models from the local store (and any interrupted download of them)."""
    from localllm.errors import LocalLLMError
    from localllm.hub.store import default_store

    store = default_store()
    for name in names:
        try:
            removed = _remove(store, name)
        except LocalLLMError as e:
            fail(str(e))
        typer.echo(f"removed {removed}")


def _remove(store, name: str) -> str:
    from localllm.errors import ModelNotFoundError
    from localllm.hub.errors import StoreError
    from localllm.hub.names import parse_name
    from localllm.hub.store import entry_slug

    ref = parse_name(name)
    if ref.kind == "path":
        raise StoreError(name, "a path, not a model in the store: refused (rm only deletes store entries)")
    if ref.kind == "alias":
        names, tag = (ref.alias.name,), ref.tag or None
    else:
        names, tag = (ref.repo, f"hf.co/{ref.repo}"), (ref.quant.lower() if ref.quant else None)
    if tag == "gguf":
        tag = None
        matches = [e for e in store.find(names) if e.manifest.format == "gguf"]
    else:
        matches = store.find(names, tag)
    if len(matches) > 1:
        tags = ", ".join(e.manifest.display_name for e in matches)
        raise StoreError(name, f"names several models ({tags}): name one of them")
    if matches:
        store.remove(matches[0])
        return matches[0].manifest.display_name
    slugs = {entry_slug(n) for n in names}
    for partial in store.partials():  # an interrupted download of that name
        base, _, partial_tag = partial.name.partition("@")
        if base in slugs and (tag is None or partial_tag == tag):
            store.remove_partial(partial)
            return partial.name.replace("--", "/").replace("@", ":") + " (an incomplete download)"
    raise ModelNotFoundError(name, "not in the store (see `localllm list`)")


# ---------------------------------------------------------------- ps


def ps(url: Annotated[str, typer.Option(help="The localllm server to ask.")] = DEFAULT_PS_URL) -> None:
    """List the models a running localllm server has loaded (GET /api/ps)."""
    import urllib.error
    import urllib.request

    endpoint = url.rstrip("/") + "/api/ps"
    try:
        with urllib.request.urlopen(endpoint, timeout=5) as response:
            data = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        fail(f"{endpoint} answered HTTP {e.code}: is {url} a localllm server?")
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        fail(f"no server answers at {url} ({reason}); start one with `localllm serve`")
    except (ValueError, UnicodeDecodeError):
        fail(f"{endpoint} did not answer JSON: is {url} a localllm server?")
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list):
        fail(f"{endpoint} answered without a `models` list: is {url} a localllm server?")
    rows = []
    for m in models:
        size, vram = int(m.get("size") or 0), int(m.get("size_vram") or 0)
        if size and vram >= size:
            processor = "100% GPU"
        elif vram:
            processor = f"{100 * (size - vram) // size}%/{100 * vram // size}% CPU/GPU"
        else:
            processor = "100% CPU"
        context = m.get("context_length")
        rows.append([str(m.get("name") or m.get("model") or "?"), _size(size), processor,
                     str(context) if context else "-", str(m.get("expires_at") or "-")])
    typer.echo(_table(rows, ["NAME", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]))


# ---------------------------------------------------------------- doctor


def doctor(
    context: Annotated[int, typer.Option(help="Context length (tokens) to plan each model for.")] = DEFAULT_CONTEXT,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Check this machine: Python, torch, CUDA, GPU memory, Triton, and which models fit."""
    import importlib.metadata

    from localllm import __version__
    from localllm.hub import remote
    from localllm.hub.aliases import load_aliases
    from localllm.hub.store import default_store
    from localllm.hub.variants import alias_precisions
    from localllm.quant import fit

    rows = [["Python", f"{platform.python_version()} ({platform.system()} {platform.machine()})"],
            ["localllm", __version__]]
    try:
        import torch

        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
        rows.append(["torch", f"{torch.__version__} ({build})"])
        cuda = torch.cuda.is_available()
        rows.append(["CUDA", f"available, {torch.cuda.device_count()} device(s)" if cuda else "not available"])
    except ImportError:
        rows.append(["torch", "not installed (pip install torch)"])
    try:
        rows.append(["Triton", importlib.metadata.version("triton")])
    except importlib.metadata.PackageNotFoundError:
        rows.append(["Triton", "not installed (GPU kernels fall back to the torch reference)"])
    try:
        memory = fit.probe_memory(device)
    except RuntimeError as e:
        fail(str(e))
    if memory.kind == "cuda":
        rows.append(["GPU", f"{memory.name} ({memory.device}), FP8 matmuls: {'yes' if memory.supports_fp8 else 'no'}"])
        rows.append(["GPU memory", f"{fit.format_gb(memory.free_bytes)} free of {fit.format_gb(memory.total_bytes)}"])
    else:
        rows.append(["GPU", "none: models run on the CPU"])
        rows.append(["RAM", f"{fit.format_gb(memory.free_bytes)} available of {fit.format_gb(memory.total_bytes)}"])
    store = default_store()
    entries = store.entries()
    rows.append(["store", f"{store.root} ({len(entries)} model(s), {_size(sum(e.manifest.size for e in entries))})"])
    offline = " (offline: HF_HUB_OFFLINE)" if remote.is_offline() else ""
    rows.append(["Hub", f"{remote.endpoint()}{offline}, HF_TOKEN {'set' if remote.token() else 'not set'}"])
    typer.echo(_table(rows))

    runnable = fit.runnable_precisions(memory)
    where = f"{fit.format_gb(memory.free_bytes)} free on {memory.name}"
    typer.echo(f"\nWhich models fit ({where}; longest context that fits, at most {fit.format_tokens(context)}):")
    table = []
    for alias in load_aliases().values():
        has = alias_precisions(alias)
        options = {o.precision: o for o in fit.plan_fit(alias.config, memory.free_bytes, context, fit.PRECISIONS,
                                                        memory.kind).options}
        cells = []
        for precision in fit.PRECISIONS:
            option = options[precision]
            if precision not in has:
                cells.append("-")
            elif precision not in runnable:
                cells.append("n/a")
            else:
                cells.append(fit.format_tokens(min(option.max_context, context) // 1024 * 1024)
                             if option.max_context >= fit.MIN_CONTEXT else "no")
        plan = fit.plan_fit(alias.config, memory.free_bytes, context, [p for p in has if p in runnable], memory.kind)
        choice = f"{fit.LABELS[plan.precision]}, {fit.format_tokens(plan.context_len)}" if plan.fits else "does not fit"
        table.append([alias.name, *cells, choice])
    typer.echo(_table(table, ["MODEL", *[fit.LABELS[p].split()[0] for p in fit.PRECISIONS], "PULL WOULD TAKE"]))
    typer.echo("(-: no pre-quantized variant; n/a: not run on this device; no: fewer than "
               f"{fit.format_tokens(fit.MIN_CONTEXT)} tokens fit)")
