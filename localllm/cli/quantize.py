"""`localllm quantize MODEL --method awq|gptq|fp8|rtn`: write a quantized Hugging Face directory
(AutoAWQ gemm, GPTQ v1, compressed-tensors FP8) and print what it cost (perplexity before and
after on held-out text, top-1 agreement, sizes, peak memory). Progress goes to stderr, one bar
over the decoder layers; the report goes to stdout (`--json` for a machine-readable one).
"""

from __future__ import annotations

import json
import os
import re
from typing import Annotated, Optional

import typer

from localllm.cli.common import fail


def _default_out(model: str, method: str, bits: int) -> str:
    base = os.path.basename(os.path.normpath(model))
    base = re.sub(r"\.gguf$", "", base, flags=re.IGNORECASE)
    base = re.sub(r"[^\w.-]+", "-", base).strip("-") or "model"
    return f"{base}-{method}-{'fp8' if method == 'fp8' else f'int{bits}'}"


def quantize(
    model: Annotated[str, typer.Argument(help="16-bit model: alias, directory or .gguf file.")],
    method: Annotated[str, typer.Option("--method", "-m", help="awq, gptq, fp8 (or rtn: plain round-to-nearest).")],
    bits: Annotated[Optional[int], typer.Option("--bits", help="4 (awq, gptq, rtn), 2/8 (gptq), 8 (fp8).")] = None,
    group_size: Annotated[int, typer.Option("--group-size", "-g", help="Input channels per scale (int methods).")] = 128,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Output directory (new or empty).")] = None,
    calib: Annotated[Optional[str], typer.Option("--calib", help="Calibration text file (default: built-in).")] = None,
    samples: Annotated[int, typer.Option("--samples", help="Calibration windows.")] = 128,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per calibration / held-out window.")] = 512,
    act_order: Annotated[bool, typer.Option("--act-order", help="GPTQ: quantize columns by decreasing activation.")] = False,
    sym: Annotated[Optional[bool], typer.Option("--sym/--asym", help="Symmetric grid (gptq default) or zero points.")] = None,
    fp8_keep: Annotated[Optional[int], typer.Option(
        "--fp8-keep", help="FP8: decoder linears kept in 16 bits, the most loss-sensitive first "
                           "(default: an eighth of them; 0: every linear in FP8).")] = None,
    fp8_keep_activations: Annotated[Optional[int], typer.Option(
        "--fp8-keep-activations", help="FP8: more decoder linears with FP8 weights but 16-bit activations, "
                                       "the most sensitive to input rounding first (default: a quarter of them; "
                                       "0: per-token FP8 activations in every other linear).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Quantize MODEL with AWQ, GPTQ or FP8 and report the quality it kept."""
    from localllm.errors import LocalLLMError
    from localllm.quant.quantize import QuantizeOptions, prepare

    options = QuantizeOptions(method=method, bits=bits, group_size=group_size, sym=sym, act_order=act_order,
                              num_samples=samples, seq_len=seq_len, calib_file=calib, device=device,
                              fp8_keep=fp8_keep, fp8_keep_activations=fp8_keep_activations)
    try:
        options.validate()
        from localllm.hub.resolve import resolve_model

        path = resolve_model(model)
        out_dir = out or _default_out(model, method, options.resolved_bits)
        job = prepare(path, out_dir, options)  # NOTE: every input is checked before anything is shown or written
        report = _run(job)
    except LocalLLMError as e:
        fail(str(e))
    except KeyboardInterrupt:
        typer.echo("aborted (nothing was written)", err=True)
        raise typer.Exit(130)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo("\n".join(report.lines()))


def _run(job):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from localllm.quant.quantize import run_job

    options = job.options
    typer.echo(f"quantizing {job.model} -> {job.out_dir} ({options.scheme_name()})", err=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} layers"),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task("calibrating" if options.calibrated else "quantizing", total=None)

        def on_layer(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = run_job(job, on_layer=on_layer)
        progress.update(task, description="done")
    return report
