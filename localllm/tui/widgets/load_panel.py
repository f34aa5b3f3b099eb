"""What the model is doing while it loads (step, progress, seconds so far), or why it failed.
While the model is pulled: the bytes of the whole download on the bar, and a line per file under
way with its own bytes and rate. Hidden once the model is ready."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from localllm.hub.progress import PullProgress, describe
from localllm.tui.backend import LoadStep


class LoadPanel(Vertical):
    DEFAULT_CSS = """
    LoadPanel #load-files {
        height: auto;
        color: $text-muted;
    }
    """

    def __init__(self, model: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.started = time.monotonic()
        self.steps: list[str] = []  # every step label seen, in order
        self.files: dict[str, PullProgress] = {}  # files of a pull under way, by path

    def compose(self) -> ComposeResult:
        yield Static(f"Loading {self.model}… (you can type your first message meanwhile)", id="load-title",
                     markup=False)
        yield Static("", id="load-step", markup=False)
        yield ProgressBar(show_eta=False, id="load-bar")
        files = Static("", id="load-files", markup=False)
        files.display = False
        yield files

    def show_step(self, step: LoadStep) -> None:
        if not self.steps or self.steps[-1] != step.label:
            self.steps.append(step.label)
        seconds = time.monotonic() - self.started
        label = step.label if step.pull is None else f"{step.label}: {describe(step.pull)}"
        self.query_one("#load-step", Static).update(f"{label}  ({seconds:.1f} s)")
        self._show_files(step.pull)
        bar = self.query_one(ProgressBar)
        bar.display = step.total is not None
        if step.total is not None:
            bar.update(total=step.total, progress=step.done or 0)

    def _show_files(self, event: PullProgress | None) -> None:
        if event is None or event.stage != "download":
            self.files.clear()
        elif event.finished:
            self.files.pop(event.item, None)
        else:
            self.files[event.item] = event
        lines = [f"  {path}  {describe(e, overall=False)}" for path, e in self.files.items()]
        files = self.query_one("#load-files", Static)
        files.update("\n".join(lines))
        files.display = bool(lines)

    def show_error(self, message: str) -> None:
        self.add_class("failed")
        self.query_one("#load-title", Static).update(f"Could not load {self.model}")
        self.query_one("#load-step", Static).update(message)
        self.query_one(ProgressBar).display = False
        self._show_files(None)
