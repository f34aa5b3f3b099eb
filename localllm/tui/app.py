"""ChatApp: the Textual app of `localllm chat`. It owns the backend (loaded in a thread while
the UI is already usable), the chat store, and the chat screen; chat-list actions (open,
rename, delete, export) and the command palette's entries live here.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message

from localllm.hub.aliases import asset_path
from localllm.tui.backend import ChatBackend, LoadStep, ModelInfo
from localllm.tui.chat_screen import ChatScreen
from localllm.tui.conversation import Conversation
from localllm.tui.screens.dialogs import ChoiceDialog, TextDialog
from localllm.tui.screens.help import HelpScreen
from localllm.tui.settings import ChatSettings
from localllm.tui.store import ChatStore
from localllm.tui.widgets.chat_list import ChatList

LATEST = "latest"  # open_chat value: reopen the chat used last


class ChatApp(App[None]):
    CSS_PATH = str(asset_path("chat.tcss"))
    TITLE = "localllm chat"
    BINDINGS = [
        Binding("f1", "help", "help"),
        Binding("ctrl+q", "quit", "quit", priority=True),
    ]

    @dataclass
    class LoadProgress(Message):
        step: LoadStep

    @dataclass
    class Loaded(Message):
        info: ModelInfo

    @dataclass
    class LoadFailed(Message):
        error: str

    def __init__(self, backend: ChatBackend, *, model_label: str, store: ChatStore,
                 system: str | None = None, settings: ChatSettings | None = None,
                 open_chat: int | str | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.model_label = model_label
        self.store = store
        self.default_system = system
        self.default_settings = settings or ChatSettings()
        self.open_chat = open_chat
        self.info: ModelInfo | None = None
        self.load_error: str | None = None

    def new_conversation(self) -> Conversation:
        return Conversation(system=self.default_system, settings=self.default_settings)

    def on_mount(self) -> None:
        chat_id = self.store.latest_chat_id() if self.open_chat == LATEST else self.open_chat
        conversation = self.new_conversation()
        if chat_id is not None:
            try:
                conversation = self.store.load(int(chat_id), self.default_settings)
            except KeyError:
                self.notify(f"no saved chat {chat_id}: starting a new one", severity="warning")
        self.chat_screen = ChatScreen(conversation)
        self.push_screen(self.chat_screen)
        # NOTE: the load starts once the screen is drawn: importing torch on the worker thread
        # would otherwise hold the interpreter while the first frame is being made.
        self.call_after_refresh(self._start_load)

    # ------------------------------------------------------------------ the model, behind the UI

    def _start_load(self) -> None:
        # NOTE: a daemon thread, not a Textual worker: quitting mid-load must not wait for
        # torch to finish importing or the weights to finish loading.
        threading.Thread(target=self._load_model, name="localllm-chat-load", daemon=True).start()

    def _load_model(self) -> None:
        # NOTE: runs on the load thread; it only posts messages (thread-safe) to the app.
        try:
            info = self.backend.load(lambda step: self.post_message(self.LoadProgress(step)))
        except Exception as error:  # noqa: BLE001 - shown in the load panel; the app stays up
            self.post_message(self.LoadFailed(str(error) or type(error).__name__))
            return
        self.post_message(self.Loaded(info))

    def on_chat_app_load_progress(self, event: LoadProgress) -> None:
        self.chat_screen.load_progress(event.step)

    def on_chat_app_loaded(self, event: Loaded) -> None:
        self.info = event.info
        self.model_label = event.info.name  # a server names its model only now
        self.chat_screen.model_loaded(event.info)

    def on_chat_app_load_failed(self, event: LoadFailed) -> None:
        self.load_error = event.error
        self.chat_screen.model_failed(event.error)

    def on_unmount(self) -> None:
        self.backend.shutdown()
        self.store.close()

    # ------------------------------------------------------------------ chat list

    def refresh_chat_list(self) -> None:
        chats = self.chat_screen.query_one(ChatList)
        if chats.display:
            chats.show_chats(self.store.list_chats(), self.chat_screen.conversation.id)

    async def chat_picked(self, what: str, chat_id: int | None) -> None:
        screen = self.chat_screen
        if what == "new":
            await screen.action_new_chat()
        elif what == "open":
            await screen.open_chat(chat_id)
        elif what == "rename":
            title = self.store.load(chat_id).title
            self.push_screen(TextDialog("Rename the chat", title), partial(self._renamed, chat_id))
        elif what == "delete":
            title = self.store.load(chat_id).title
            self.push_screen(ChoiceDialog("Delete this chat?", title, [("y", "delete it")]),
                             partial(self._delete_chosen, chat_id))
        elif what == "export":
            conversation = self.store.load(chat_id)
            self.push_screen(TextDialog("Export as Markdown to", default_export_path(conversation.title)),
                             partial(self._export_to, chat_id))

    def _renamed(self, chat_id: int, title: str | None) -> None:
        if title:
            self.store.rename(chat_id, title)
            if self.chat_screen.conversation.id == chat_id:
                self.chat_screen.conversation.title = title
            self.refresh_chat_list()

    async def _delete_chosen(self, chat_id: int, choice: str | None) -> None:
        if choice != "y":
            return
        if self.chat_screen.conversation.id == chat_id:
            if self.chat_screen.answering is not None:
                self.notify("stop the answer first (Esc)", severity="warning")
                return
            await self.chat_screen.show_conversation(self.new_conversation())
        self.store.delete(chat_id)
        self.refresh_chat_list()
        self.notify("chat deleted", timeout=2)

    def _export_to(self, chat_id: int, path: str | None) -> None:
        if not path:
            return
        target = Path(path).expanduser()
        try:
            target.write_text(self.store.load(chat_id).to_markdown(), encoding="utf-8")
        except OSError as error:
            self.notify(f"could not write {target}: {error.strerror}", severity="error")
            return
        self.notify(f"exported to {target}", timeout=4)

    # ------------------------------------------------------------------ help, palette

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        run = self.chat_screen.run_action
        yield SystemCommand("New chat", "Start an empty chat", partial(run, "new_chat"))
        yield SystemCommand("Regenerate", "Answer the last prompt again", partial(run, "regenerate"))
        yield SystemCommand("Clear chat", "Remove every message of this chat", partial(run, "clear"))
        yield SystemCommand("Chats", "Show or hide the saved chats", partial(run, "toggle_chats"))
        yield SystemCommand("Settings", "System prompt and sampling of this chat", partial(run, "settings"))
        if self.chat_screen.conversation.id is not None:
            yield SystemCommand("Export chat", "Save this chat as Markdown",
                                partial(self.chat_picked, "export", self.chat_screen.conversation.id))
        yield SystemCommand("Keys", "Every key of the chat", self.action_help)


def default_export_path(title: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-").lower()[:40] or "chat"
    return f"{slug}.md"
