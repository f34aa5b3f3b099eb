"""What the model is doing while it loads (step, progress, seconds so far), or why it failed.
Hidden once the model is ready."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from localllm.tui.backend import LoadStep


class LoadPanel(Vertical):
    def __init__(self, model: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.started = time.monotonic()
        self.steps: list[str] = []  # every step label seen, in order

    def compose(self) -> ComposeResult:
        yield Static(f"Loading {self.model}… (you can type your first message meanwhile)", id="load-title",
                     markup=False)
        yield Static("", id="load-step", markup=False)
        yield ProgressBar(show_eta=False, id="load-bar")

    def show_step(self, step: LoadStep) -> None:
        if not self.steps or self.steps[-1] != step.label:
            self.steps.append(step.label)
        seconds = time.monotonic() - self.started
        self.query_one("#load-step", Static).update(f"{step.label}  ({seconds:.1f} s)")
        bar = self.query_one(ProgressBar)
        bar.display = step.total is not None
        if step.total is not None:
            bar.update(total=step.total, progress=step.done or 0)

    def show_error(self, message: str) -> None:
        self.add_class("failed")
        self.query_one("#load-title", Static).update(f"Could not load {self.model}")
        self.query_one("#load-step", Static).update(message)
        self.query_one(ProgressBar).display = False
