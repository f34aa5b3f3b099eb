"""The chat screen's chat-level actions: new chat, clear, open a saved chat, the chat list, the
settings dialog. A mixin of ChatScreen (chat_screen.py), which holds the state these use.
"""

from __future__ import annotations

from localllm.tui.chat_sending import NEW_CHAT_TITLE
from localllm.tui.screens.settings import SettingsScreen
from localllm.tui.widgets.chat_list import ChatList


class ChatActionsMixin:
    async def new_chat(self) -> None:
        await self.show_conversation(self.app.new_conversation())
        self.prompt.focus()

    async def action_new_chat(self) -> None:
        if not self._busy():
            await self.new_chat()

    async def action_clear(self) -> None:
        if self._busy() or not self.conversation.messages:
            return
        await self._remove(list(self.conversation.messages))
        self.conversation.title = NEW_CHAT_TITLE
        if self.conversation.id is not None:
            self.app.store.save_header(self.conversation)
        self.status.show(tokens_per_second=None, ttft=None, num_cached_tokens=None, context_used=0)
        self.app.refresh_chat_list()
        self.notify("chat cleared", timeout=2)

    async def open_chat(self, chat_id: int) -> None:
        if self._busy():
            return
        await self.show_conversation(self.app.store.load(chat_id, self.app.default_settings))
        self.prompt.focus()

    def action_toggle_chats(self) -> None:
        chats = self.query_one(ChatList)
        chats.display = not chats.display
        if chats.display:
            self.app.refresh_chat_list()
            chats.focus()
        else:
            self.prompt.focus()

    def action_settings(self) -> None:
        def saved(result) -> None:
            if result is None:
                return
            self.conversation.system, self.conversation.settings = result
            if self.conversation.id is not None:
                self.app.store.save_header(self.conversation)
            self._recount_context()
            self.notify("settings saved for this chat", timeout=2)

        self.app.push_screen(SettingsScreen(self.conversation.system, self.conversation.settings), saved)

    async def on_chat_list_picked(self, event: ChatList.Picked) -> None:
        await self.app.chat_picked(event.what, event.chat_id)
