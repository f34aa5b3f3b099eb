"""The prompt box: Enter sends, Shift+Enter or Ctrl+J starts a new line, Up in an empty box
takes the last prompt back for editing. It grows with its text up to a few lines."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea


class PromptArea(TextArea):
    # NOTE: Enter and the new-line keys are handled in _on_key, in this widget's own queue,
    # after the keys typed before them; an app-level (priority) binding would read the text
    # before a fast typist's (or a paste's) last characters are in. The bindings label the footer.
    BINDINGS = [
        Binding("enter", "submit", "send"),
        Binding("shift+enter,ctrl+j", "newline", "new line"),
    ]

    @dataclass
    class Submitted(Message):
        text: str

    class EditLast(Message):
        """Up pressed in an empty box."""

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)

    async def _on_key(self, event: events.Key) -> None:
        # Textual calls TextArea._on_key after this one unless the default is prevented.
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.action_submit()
        elif event.key in ("shift+enter", "ctrl+j"):
            event.stop()
            event.prevent_default()
            self.action_newline()

    def action_submit(self) -> None:
        self.post_message(self.Submitted(self.text))

    def action_newline(self) -> None:
        self.insert("\n")

    def action_cursor_up(self, select: bool = False) -> None:
        if not self.text and not select:
            self.post_message(self.EditLast())
            return
        super().action_cursor_up(select)
