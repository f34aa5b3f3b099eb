"""The sidebar of saved chats: Enter opens one, r renames, d deletes, e exports as Markdown,
n starts a new chat. The open chat is marked."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from localllm.tui.store import ChatSummary


class ChatList(OptionList):
    BINDINGS = [
        Binding("r", "chat('rename')", "rename"),
        Binding("d,delete", "chat('delete')", "delete"),
        Binding("e", "chat('export')", "export"),
        Binding("n", "chat('new')", "new chat"),
    ]

    @dataclass
    class Picked(Message):
        """`what` ("open", "rename", "delete", "export", "new") for chat `chat_id`."""

        what: str
        chat_id: int | None

    def show_chats(self, chats: list[ChatSummary], current_id: int | None) -> None:
        highlighted = self.highlighted
        self.clear_options()
        for chat in chats:
            label = Text(no_wrap=True, overflow="ellipsis")
            label.append("● " if chat.id == current_id else "  ", "bold")
            label.append(chat.title)
            label.append(f"\n  {chat.num_messages} messages" + (f" · {chat.model}" if chat.model else ""), "dim")
            self.add_option(Option(label, id=str(chat.id)))
        if chats:
            self.highlighted = min(highlighted or 0, len(chats) - 1)

    def _chat_id(self) -> int | None:
        if self.highlighted is None:
            return None
        return int(self.get_option_at_index(self.highlighted).id)

    def action_chat(self, what: str) -> None:
        chat_id = self._chat_id()
        if chat_id is not None or what == "new":
            self.post_message(self.Picked(what, chat_id))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.post_message(self.Picked("open", int(event.option.id)))
