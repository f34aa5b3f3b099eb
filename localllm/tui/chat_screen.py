"""The chat screen: messages, the prompt box, the load panel, the status line, the chat list.
Its jobs live in mixins beside it: sending (chat_sending.py), answering (chat_answering.py), and
chat-level actions (chat_actions.py); here are the layout, the model load's effects, the status
line's figures, and showing, storing and removing messages.

NOTE: one answer streams at a time (`self.answering` holds its request id). Actions that
change the messages refuse while it streams; Esc stops it first.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer

from localllm.tui.backend import LoadStep, ModelInfo
from localllm.tui.chat_actions import ChatActionsMixin
from localllm.tui.chat_answering import AnsweringMixin
from localllm.tui.chat_sending import SendingMixin
from localllm.tui.conversation import ASSISTANT, ERROR, Conversation, Message
from localllm.tui.widgets.chat_list import ChatList
from localllm.tui.widgets.load_panel import LoadPanel
from localllm.tui.widgets.message import MessageView, author_name
from localllm.tui.widgets.prompt import PromptArea
from localllm.tui.widgets.status import StatusLine


class ChatScreen(SendingMixin, AnsweringMixin, ChatActionsMixin, Screen):
    BINDINGS = [
        Binding("escape", "stop", "stop", priority=True, show=False),
        Binding("ctrl+r", "regenerate", "regenerate"),
        Binding("ctrl+n", "new_chat", "new chat"),
        Binding("ctrl+l", "clear", "clear"),
        Binding("ctrl+b", "toggle_chats", "chats"),
        Binding("f2", "settings", "settings"),
    ]

    def __init__(self, conversation: Conversation) -> None:
        super().__init__()
        self.conversation = conversation
        self.answering: str | None = None  # request id of the answer streaming now
        self.waiting_for_model = False  # a message was sent before the model was ready

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield ChatList(id="chats")
            with Vertical(id="chat"):
                yield VerticalScroll(id="messages")
                yield LoadPanel(self.app.model_label, id="load")
                yield PromptArea(id="prompt", placeholder=self._placeholder(self.app.model_label))
                yield StatusLine(id="status")
        yield Footer()

    @staticmethod
    def _placeholder(model: str) -> str:
        return f"Message {model}…  (F1: keys)"

    async def on_mount(self) -> None:
        self.query_one("#messages").anchor()
        self.query_one(PromptArea).focus()
        self.status.show(loading="starting")
        await self.show_conversation(self.conversation)

    @property
    def status(self) -> StatusLine:
        return self.query_one(StatusLine)

    @property
    def prompt(self) -> PromptArea:
        return self.query_one(PromptArea)

    # ------------------------------------------------------------------ model load (from the app)

    def load_progress(self, step: LoadStep) -> None:
        self.query_one(LoadPanel).show_step(step)
        self.status.show(loading=step.label)

    def model_loaded(self, info: ModelInfo) -> None:
        self.query_one(LoadPanel).display = False
        self.prompt.placeholder = self._placeholder(info.name)
        self.status.show(info=info, loading=None)
        self.set_interval(0.5, self._show_kv_cache)
        self._show_kv_cache()
        self._recount_context()
        if self.waiting_for_model:
            self.waiting_for_model = False
            self.run_worker(self.send_waiting())

    def model_failed(self, message: str) -> None:
        self.query_one(LoadPanel).show_error(message)
        self.status.show(failed=True)
        if self.waiting_for_model:
            self.waiting_for_model = False
            self.run_worker(self._show_error(f"the model did not load: {message}"))

    def _show_kv_cache(self) -> None:
        if self.app.info is not None:
            self.status.show(kv_cache=self.app.backend.kv_cache_usage())

    def _recount_context(self, fallback: int | None = None) -> None:
        """The context the chat takes now; `fallback` where the backend cannot count."""
        if self.app.info is None:
            self.status.show(context_used=fallback)
            return
        messages = self.conversation.prompt_messages()
        # NOTE: on the event loop, unlike the overflow check (chat_sending.py): one count, and
        # with a server mostly a cache hit (the messages the send check has just counted); a
        # miss (a chat opened, turns removed) is one /tokenize request, capped at 2 s, and after
        # a failure none for a while (token_counter.py). Moving it to a thread would let it land
        # after the answer's own figure and overwrite it.
        try:
            count = self.app.backend.count_tokens(messages) if messages else 0
        except Exception:  # noqa: BLE001 - a template failure shows when sending
            count = None
        # None: the backend cannot count (a server); the next answer's usage will say.
        self.status.show(context_used=fallback if count is None else count)

    # ------------------------------------------------------------------ showing a conversation

    async def show_conversation(self, conversation: Conversation) -> None:
        self.conversation = conversation
        container = self.query_one("#messages")
        await container.remove_children()
        await container.mount_all([self._view(m) for m in conversation.messages])
        answers = [m for m in conversation.messages if m.role == ASSISTANT and m.meta]
        meta = answers[-1].meta if answers else {}
        self.status.show(tokens_per_second=meta.get("tokens_per_second"), ttft=meta.get("ttft"),
                         num_cached_tokens=meta.get("num_cached_tokens"))
        self._recount_context(fallback=_context_after(meta) if conversation.messages else 0)
        self.app.refresh_chat_list()

    def _view(self, message: Message) -> MessageView:
        return MessageView(message, author_name(message.role, self.app.model_label))

    async def _append(self, message: Message) -> MessageView:
        view = self._view(message)
        await self.query_one("#messages").mount(view)
        return view

    def _persist(self, message: Message) -> None:
        conversation = self.conversation
        if conversation.id is None:
            conversation.model = self.app.model_label
            self.app.store.create(conversation)  # stores the messages it holds, this one included
            self.app.refresh_chat_list()
        else:
            self.app.store.add_message(conversation.id, message)

    async def _remove(self, messages: list[Message]) -> None:
        gone = {id(m) for m in messages}
        self.conversation.messages = [m for m in self.conversation.messages if id(m) not in gone]
        if self.conversation.id is not None:
            self.app.store.delete_messages(self.conversation.id, messages)
        for view in list(self.query(MessageView)):
            if id(view.message) in gone:
                await view.remove()
        self._recount_context()

    async def _show_error(self, text: str) -> None:
        message = Message(ERROR, text)
        self.conversation.messages.append(message)
        self._persist(message)
        await self._append(message)
        self.notify(text, severity="error", timeout=6)

    def _busy(self) -> bool:
        if self.answering is not None:
            self.notify("an answer is streaming: press Esc to stop it first", severity="warning", timeout=3)
            return True
        return False


def _context_after(meta: dict) -> int | None:
    """Context a stored answer left in use, when its figures say (the backend may recount)."""
    if meta.get("num_prompt_tokens") is None:
        return None
    return meta["num_prompt_tokens"] + meta.get("num_generated_tokens", 0)
