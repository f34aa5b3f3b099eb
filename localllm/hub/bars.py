"""A pull's progress as rich bars on stderr (`localllm pull`): a row per file with its bytes and
rate, a row for the whole download, a row for the layers of a local quantization. Fed only by
PullProgress events (progress.py), as the chat's loading screen is."""

from __future__ import annotations

from localllm.hub.progress import PullProgress, describe

OVERALL = "download"  # the description of the whole-pull row


class PullBars:
    """A context manager; call it with each PullProgress, and log() messages through it so they
    print above the bars instead of through them."""

    def __init__(self, console=None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(bar_width=24),
            TextColumn("{task.fields[figures]}", markup=False), TimeRemainingColumn(),
            console=console or Console(stderr=True, highlight=False),
        )
        self.rows: dict[tuple[str, str], int] = {}
        self.started = False  # NOTE: the bars appear with the first event: a pull with nothing to
        # fetch (or one that fails first) prints no empty display

    def __enter__(self) -> "PullBars":
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.progress.stop()

    def log(self, message: str) -> None:
        self.progress.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def __call__(self, event: PullProgress) -> None:
        if not self.started:
            self.started = True
            self.progress.start()
        if event.stage == "download":
            self._show(("overall", OVERALL), OVERALL, event.overall_done, event.overall_total, describe(event))
            self._show((event.stage, event.item), f"  {event.item}", event.done, event.total,
                       describe(event, overall=False))
        else:
            self._show((event.stage, event.item), f"quantize {event.item}", event.done, event.total,
                       describe(event))

    def _show(self, key: tuple[str, str], description: str, done: int, total: int | None, figures: str) -> None:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = self.progress.add_task(description, total=total, figures=figures)
        self.progress.update(row, completed=done, total=total, figures=figures)
