"""One message on screen: who said it, its Markdown (code blocks highlighted), and for an
answer a line of figures. Focusable, so the keyboard can copy it or one of its code blocks.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Markdown, Static

from localllm.tui.conversation import ASSISTANT, ERROR, USER, Message


def code_blocks(markdown: str) -> list[str]:
    """The fenced and indented code blocks of a Markdown text, in order."""
    from markdown_it import MarkdownIt

    return [t.content for t in MarkdownIt("commonmark").parse(markdown) if t.type in ("fence", "code_block")]


def answer_figures(meta: dict) -> str:
    """"42 tokens · 31.5 tok/s · first token 0.12 s · 96 cached · stopped"."""
    parts = []
    if meta.get("num_generated_tokens") is not None:
        parts.append(f"{meta['num_generated_tokens']} tokens")
    if meta.get("tokens_per_second"):
        parts.append(f"{meta['tokens_per_second']:.1f} tok/s")
    if meta.get("ttft") is not None:
        parts.append(f"first token {meta['ttft']:.2f} s")
    if meta.get("num_cached_tokens"):
        parts.append(f"{meta['num_cached_tokens']} cached")
    reason = meta.get("finish_reason")
    if reason == "abort":
        parts.append("stopped")
    elif reason == "length":
        parts.append("cut at max tokens")
    return " · ".join(parts)


class MessageView(Vertical, can_focus=True):
    BINDINGS = [
        Binding("c", "copy", "copy message"),
        Binding("b", "copy_code", "copy code block"),
    ]

    def __init__(self, message: Message, author: str) -> None:
        super().__init__(classes=f"message {message.role}")
        self.message = message
        self.author = author
        self._next_block = 0

    def compose(self) -> ComposeResult:
        yield Static(self.author, classes="author", markup=False)
        if self.message.role == ERROR:
            yield Static(self.message.content, classes="body", markup=False)
        else:
            yield Markdown(self.message.content, classes="body")
        yield Static(answer_figures(self.message.meta), classes="figures", markup=False)

    @property
    def body(self) -> Markdown:
        return self.query_one(".body", Markdown)

    def show_figures(self, meta: dict, live: bool = False) -> None:
        text = answer_figures(meta)
        if live and not text:
            text = "thinking…"
        self.query_one(".figures", Static).update(text)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.message.content)
        self.app.notify("message copied", timeout=2)

    def action_copy_code(self) -> None:
        """Each press copies the next code block of the message, from the first again after the last."""
        blocks = code_blocks(self.message.content)
        if not blocks:
            self.app.notify("this message has no code block", severity="warning", timeout=2)
            return
        index = self._next_block % len(blocks)
        self._next_block = index + 1
        self.app.copy_to_clipboard(blocks[index])
        self.app.notify(f"code block {index + 1} of {len(blocks)} copied", timeout=2)


def author_name(role: str, model_name: str) -> str:
    return {USER: "you", ASSISTANT: model_name, ERROR: "error"}.get(role, role)
