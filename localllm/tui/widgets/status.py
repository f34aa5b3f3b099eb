"""The status line: model, quantization, the last answer's tok/s, time to first token and
cached prompt tokens, KV cache use, and context used / context length (marked past 80%)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from localllm.tui.backend import ModelInfo

CONTEXT_WARNING = 0.8  # share of the context past which the status line warns


@dataclass
class StatusFacts:
    info: ModelInfo | None = None
    loading: str | None = None  # the load step under way
    failed: bool = False
    tokens_per_second: float | None = None
    ttft: float | None = None
    num_cached_tokens: int | None = None
    kv_cache: tuple[int, int] | None = None  # blocks used, total
    context_used: int | None = None
    generating: bool = False


def status_text(facts: StatusFacts, width: int | None = None) -> Text:
    """The line for `width` cells: figures that do not fit are left out, least useful first
    (quantization, KV cache, cached tokens, TTFT, tok/s); the context figure goes last."""
    if facts.info is None:
        if facts.failed:
            return Text("model failed to load", "bold red")
        return Text(f"loading: {facts.loading or '…'}", "italic", no_wrap=True, overflow="ellipsis")
    info = facts.info
    # (drop order: higher goes first, 0 never, text, style)
    parts: list[tuple[int, str, str]] = [(0, info.name, "bold")]
    if info.quantization:
        parts.append((6, info.quantization, ""))
    if facts.generating:
        parts.append((0, "answering · Esc stops", "bold"))
    if facts.tokens_per_second:
        parts.append((2, f"{facts.tokens_per_second:.1f} tok/s", ""))
    if facts.ttft is not None:
        parts.append((3, f"TTFT {facts.ttft:.2f}s", ""))
    if facts.num_cached_tokens is not None:
        parts.append((4, f"cached {facts.num_cached_tokens}", ""))
    if facts.kv_cache is not None:
        used, total = facts.kv_cache
        parts.append((5, f"KV {100 * used / max(total, 1):.0f}%", ""))
    if info.max_model_len:
        used = facts.context_used
        style = "bold yellow" if used is not None and used >= CONTEXT_WARNING * info.max_model_len else ""
        parts.append((1, f"ctx {'?' if used is None else used}/{info.max_model_len}", style))
    sep = " │ "
    while width is not None and sum(len(p[1]) for p in parts) + len(sep) * (len(parts) - 1) > width:
        worst = max(parts, key=lambda p: p[0])
        if worst[0] == 0:
            break
        parts.remove(worst)
    text = Text(no_wrap=True, overflow="ellipsis")
    for i, (_, piece, style) in enumerate(parts):
        if i:
            text.append(sep, "dim")
        text.append(piece, style)
    return text


class StatusLine(Static):
    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)
        self.facts = StatusFacts()

    def show(self, **changes) -> None:
        for name, value in changes.items():
            setattr(self.facts, name, value)
        self.update(status_text(self.facts, self.content_size.width or None))

    def on_resize(self) -> None:
        self.update(status_text(self.facts, self.content_size.width or None))
