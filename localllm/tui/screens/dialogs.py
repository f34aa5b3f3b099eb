"""Small modal dialogs: one line of text to enter (rename, export path), or one choice among
a few (context overflow, delete). Esc cancels both and returns None."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static


class TextDialog(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "cancel")]

    def __init__(self, title: str, value: str = "", hint: str = "Enter to confirm · Esc to cancel") -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.value = value
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.title_text, classes="dialog-title", markup=False)
            yield Input(self.value, id="dialog-input")
            yield Static(self.hint, classes="dialog-hint", markup=False)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if value:
            self.dismiss(value)


class ChoiceDialog(ModalScreen[str | None]):
    """`choices`: (key, label) pairs; a button each, and the key pressed alone picks it too."""

    BINDINGS = [Binding("escape", "dismiss(None)", "cancel")]

    def __init__(self, title: str, body: str, choices: list[tuple[str, str]]) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.body = body
        self.choices = choices

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.title_text, classes="dialog-title", markup=False)
            yield Static(self.body, classes="dialog-body", markup=False)
            with Horizontal(classes="dialog-buttons"):
                for key, label in self.choices:
                    yield Button(f"{key}: {label}", id=f"choice-{key}", compact=True)
            yield Static("Esc to cancel", classes="dialog-hint", markup=False)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id.removeprefix("choice-"))

    def on_key(self, event) -> None:
        for key, _ in self.choices:
            if event.key == key:
                event.stop()
                self.dismiss(key)
