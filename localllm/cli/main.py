"""The `localllm` command. One module per command group (cli/run.py, ...); each imports the
engine and torch inside its command, so `localllm --help` and `--version` stay fast."""

from __future__ import annotations

from typing import Annotated

import typer

from localllm.cli import bench as bench_cmd
from localllm.cli import chat as chat_cmd
from localllm.cli import models as models_cmd
from localllm.cli import quantize as quantize_cmd
from localllm.cli import run as run_cmd
from localllm.cli import serve as serve_cmd

app = typer.Typer(
    name="localllm",
    help="Run open LLMs on this machine: paged-KV engine, terminal chat, OpenAI and Ollama APIs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _show_version(value: bool) -> None:
    if value:
        from localllm import __version__

        typer.echo(f"localllm {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Run open LLMs on this machine."""


app.command("run")(run_cmd.run)
app.command("serve")(serve_cmd.serve)
app.command("pull")(models_cmd.pull)
app.command("list")(models_cmd.list_models)
app.command("show")(models_cmd.show)
app.command("rm")(models_cmd.rm)
app.command("ps")(models_cmd.ps)
app.command("doctor")(models_cmd.doctor)
app.command("chat")(chat_cmd.chat)
app.command("quantize")(quantize_cmd.quantize)
app.add_typer(bench_cmd.app, name="bench")
