"""The help screen: every key of the chat app, by where it works."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

# NOTE: tests check that every binding of the app, the prompt, a message and the chat list is
# listed here, so this table cannot fall behind the code.
KEYS: list[tuple[str, str, str]] = [
    ("anywhere", "Esc", "stop the answer (the request is aborted in the engine)"),
    ("anywhere", "Ctrl+R", "regenerate the last answer"),
    ("anywhere", "Ctrl+N", "new chat"),
    ("anywhere", "Ctrl+L", "clear this chat"),
    ("anywhere", "Ctrl+B", "show / hide the saved chats"),
    ("anywhere", "F2", "system prompt and sampling settings of this chat"),
    ("anywhere", "Ctrl+P", "command palette (every action, by name)"),
    ("anywhere", "Tab / Shift+Tab", "move between the prompt, messages and chats"),
    ("anywhere", "F1", "this help"),
    ("anywhere", "Ctrl+Q", "quit"),
    ("prompt", "Enter", "send"),
    ("prompt", "Shift+Enter, Ctrl+J", "new line"),
    ("prompt", "Up (empty box)", "edit the last prompt and send it again"),
    ("message", "c", "copy the message"),
    ("message", "b", "copy a code block (press again for the next)"),
    ("chats", "Enter", "open the chat"),
    ("chats", "r / d / e", "rename / delete / export as Markdown"),
    ("chats", "n", "new chat"),
]


_SECTIONS = {"anywhere": "Anywhere", "prompt": "In the prompt box", "message": "On a message (Shift+Tab from the prompt)",
             "chats": "In the chat list (Ctrl+B)"}


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss(None)", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog help"):
            yield Static("Keys  (Esc closes)", classes="dialog-title")
            for where, title in _SECTIONS.items():
                table = Table(box=None, show_header=False, padding=(0, 1), expand=True)
                table.add_column(style="bold", no_wrap=True, width=21, min_width=21, max_width=21)
                table.add_column(ratio=1)
                for _, keys, what in (row for row in KEYS if row[0] == where):
                    table.add_row(keys, what)
                yield Static(title, classes="help-section", markup=False)
                yield Static(table)
