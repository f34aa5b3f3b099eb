"""The chat screen: messages, the prompt box, the load panel, the status line, the chat list;
and every action on the conversation (send, stop, regenerate, edit, clear, open, settings).

NOTE: one answer streams at a time (`self.answering` holds its request id). Actions that
change the messages refuse while it streams; Esc stops it first.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from textual import work
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer

from localllm.tui.backend import BackendError, LoadStep, ModelInfo
from localllm.tui.conversation import ASSISTANT, ERROR, USER, Conversation, Message
from localllm.tui.overflow import check_context
from localllm.tui.screens.dialogs import ChoiceDialog
from localllm.tui.screens.settings import SettingsScreen
from localllm.tui.turn import TurnStats, stream_answer
from localllm.tui.widgets.chat_list import ChatList
from localllm.tui.widgets.load_panel import LoadPanel
from localllm.tui.widgets.message import MessageView, author_name
from localllm.tui.widgets.prompt import PromptArea
from localllm.tui.widgets.status import StatusLine

ABORT_GRACE_SECONDS = 3.0  # after Esc, how long the backend may take to confirm the abort
FIGURES_INTERVAL = 0.3  # seconds between updates of the live figures while an answer streams
NEW_CHAT_TITLE = Conversation().title


class ChatScreen(Screen):
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
            self._start_answer()

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

    # ------------------------------------------------------------------ sending

    async def on_prompt_area_submitted(self, event: PromptArea.Submitted) -> None:
        text = event.text
        if not text.strip() or self._busy():
            return
        if self.app.load_error is not None:
            self.notify(f"no model to answer: {self.app.load_error}", severity="error")
            return
        if self.app.info is not None and not self._fits(text):
            return  # the overflow dialog takes it from here
        self.prompt.clear()
        await self._send(text)

    async def _send(self, text: str) -> None:
        conversation = self.conversation
        if conversation.num_turns() == 0 and conversation.title == NEW_CHAT_TITLE:
            conversation.title = conversation.title_from(text)
            if conversation.id is not None:
                self.app.store.save_header(conversation)
        message = Message(USER, text)
        conversation.messages.append(message)
        self._persist(message)
        await self._append(message)
        if self.app.info is None:
            self.waiting_for_model = True
            self.notify("the model is loading: your message goes as soon as it is ready", timeout=4)
            return
        self._start_answer()

    def _fits(self, text: str) -> bool:
        """False (and the overflow dialog is up, or an error shown) when the prompt plus max
        tokens would not fit in the context."""
        try:
            overflow = check_context(self.app.backend.count_tokens, self.conversation, text,
                                     self.app.info.max_model_len)
        except BackendError:
            return True  # sending shows the template error
        if overflow is None:
            return True
        if not overflow.fits_in_new_chat:
            self.notify(f"this message alone needs {overflow.num_alone_tokens} tokens + max tokens "
                        f"{overflow.max_tokens} > context {overflow.max_model_len}: shorten it or lower "
                        "max tokens (F2)", severity="error", timeout=8)
            return False
        choices = [("n", "new chat")]
        if overflow.num_turns_to_drop:
            choices.insert(0, ("d", f"drop {overflow.turns_to_drop()}"))
        self.app.push_screen(ChoiceDialog("The context would overflow", overflow.explain(), choices),
                             lambda choice: self._overflow_chosen(choice, text, overflow.num_turns_to_drop or 0))
        return False

    async def _overflow_chosen(self, choice: str | None, text: str, num_dropped: int) -> None:
        if choice == "d":
            dropped: list[Message] = []
            trial = Conversation(messages=list(self.conversation.messages))
            for _ in range(num_dropped):
                dropped += trial.drop_oldest_turn()
            await self._remove(dropped)
            self.notify(f"dropped the oldest {num_dropped} turn{'s' * (num_dropped > 1)}", timeout=3)
        elif choice == "n":
            await self.new_chat()
        else:
            return
        self.prompt.clear()
        await self._send(text)

    # ------------------------------------------------------------------ answering

    def _start_answer(self) -> None:
        self.answering = f"chat-{uuid.uuid4().hex}"
        self.status.show(generating=True)
        self._answer(self.answering)

    @work(group="answer", exclusive=True)
    async def _answer(self, request_id: str) -> None:
        try:
            await self._stream_and_save(request_id)
        finally:
            # NOTE: cleared only once the answer (or its error) is saved and shown, so nothing
            # else changes the messages in between.
            self.answering = None
            self.status.show(generating=False)
            self._show_kv_cache()

    async def _stream_and_save(self, request_id: str) -> None:
        conversation = self.conversation
        message = Message(ASSISTANT, "")
        view = await self._append(message)
        view.show_figures({}, live=True)
        self._recount_context()
        stats: TurnStats | None = None
        error: str | None = None

        last_shown = 0.0

        def on_update(live: TurnStats, final: bool = False) -> None:
            nonlocal last_shown
            now = time.monotonic()
            if not final and now - last_shown < FIGURES_INTERVAL:
                return  # the text streams at once; the figures a few times a second
            last_shown = now
            view.show_figures(live.to_meta(), live=not final)
            self.status.show(tokens_per_second=live.tokens_per_second, ttft=live.ttft,
                             num_cached_tokens=live.num_cached_tokens)
            if live.context_used is not None:  # a stopped HTTP stream never says
                self.status.show(context_used=live.context_used)

        try:
            _, stats = await stream_answer(self.app.backend, conversation.prompt_messages(),
                                           conversation.settings, request_id, view, on_update)
        except asyncio.CancelledError:
            message.meta = {"finish_reason": "abort"}  # the backend never confirmed the abort
        except BackendError as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - an engine failure is a message, not a crash
            error = f"engine error: {type(e).__name__}: {e}"
        if stats is not None:
            message.meta = stats.to_meta()
            on_update(stats, final=True)
        if message.content or stats is not None:
            conversation.messages.append(message)
            self._persist(message)
            view.show_figures(message.meta)
        else:
            await view.remove()
        if error is not None:
            await self._show_error(error)

    async def action_stop(self) -> None:
        request_id = self.answering
        if request_id is None:
            raise SkipAction()  # Esc means nothing here: let the focused widget have it
        await self.app.backend.abort(request_id)

        def give_up() -> None:
            if self.answering == request_id:
                self.workers.cancel_group(self, "answer")

        self.set_timer(ABORT_GRACE_SECONDS, give_up)

    async def action_regenerate(self) -> None:
        if self._busy():
            return
        index = self.conversation.last_index(USER)
        if index is None:
            self.notify("no prompt to answer again", severity="warning", timeout=3)
            return
        if self.app.info is None:
            self.notify("the model is not loaded", severity="warning", timeout=3)
            return
        await self._remove(self.conversation.messages[index + 1:])
        self._start_answer()

    async def on_prompt_area_edit_last(self, event: PromptArea.EditLast) -> None:
        if self.answering is not None:
            return
        index = self.conversation.last_index(USER)
        if index is None:
            return
        removed = self.conversation.messages[index:]
        await self._remove(removed)
        self.prompt.load_text(removed[0].content)
        self.prompt.move_cursor(self.prompt.document.end)

    # ------------------------------------------------------------------ chats

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


def _context_after(meta: dict) -> int | None:
    """Context a stored answer left in use, when its figures say (the backend may recount)."""
    if meta.get("num_prompt_tokens") is None:
        return None
    return meta["num_prompt_tokens"] + meta.get("num_generated_tokens", 0)
