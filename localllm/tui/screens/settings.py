"""The settings dialog of one chat: system prompt and sampling. Values are checked by
SamplingParams itself, so a bad one shows the engine's own message and nothing is saved.
Returns (system prompt or None, ChatSettings), or None when cancelled."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static, TextArea

from localllm.tui.settings import ChatSettings

# (field, label, parse); a blank seed means none.
_FIELDS = [
    ("temperature", "temperature", float),
    ("top_p", "top p", float),
    ("top_k", "top k", int),
    ("min_p", "min p", float),
    ("repetition_penalty", "repetition penalty", float),
    ("max_tokens", "max tokens", int),
    ("seed", "seed", lambda text: int(text) if text.strip() else None),
]


def parse_stop(text: str) -> tuple[str, ...]:
    """Stop strings separated by `|`; `\\n` stands for a newline."""
    return tuple(part.replace("\\n", "\n") for part in text.split("|") if part.strip())


def format_stop(stop: tuple[str, ...]) -> str:
    return "|".join(s.replace("\n", "\\n") for s in stop)


class SettingsScreen(ModalScreen[tuple[str | None, ChatSettings] | None]):
    BINDINGS = [
        Binding("escape", "dismiss(None)", "cancel"),
        Binding("ctrl+s", "save", "save", priority=True),
    ]

    def __init__(self, system: str | None, settings: ChatSettings) -> None:
        super().__init__(classes="dialog-screen")
        self.system = system
        self.settings = settings

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog settings"):
            yield Static("Chat settings  (Ctrl+S or Enter saves · Esc cancels)", classes="dialog-title")
            yield Static("system prompt", classes="label")
            yield TextArea(self.system or "", id="system", soft_wrap=True, tab_behavior="focus", compact=True)
            with Grid(id="fields"):
                for name, label, _ in _FIELDS:
                    value = getattr(self.settings, name)
                    yield Static(label, classes="label")
                    yield Input("" if value is None else str(value), id=name, compact=True, select_on_focus=False)
                yield Static("stop ( | apart)", classes="label")
                yield Input(format_stop(self.settings.stop), id="stop", compact=True, select_on_focus=False)
            yield Static("", id="settings-error", markup=False)

    def read(self) -> tuple[str | None, ChatSettings]:
        """Raises ValueError naming the field that is wrong."""
        values = {}
        for name, label, parse in _FIELDS:
            text = self.query_one(f"#{name}", Input).value
            try:
                values[name] = parse(text)
            except ValueError:
                raise ValueError(f"{label}: {text!r} is not a number") from None
        values["stop"] = parse_stop(self.query_one("#stop", Input).value)
        settings = ChatSettings(**values).validated()
        system = self.query_one("#system", TextArea).text.strip() or None
        return system, settings

    def action_save(self) -> None:
        try:
            result = self.read()
        except ValueError as error:
            self.query_one("#settings-error", Static).update(str(error))
            return
        self.dismiss(result)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()
