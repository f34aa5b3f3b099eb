"""Answering: stream the model's answer into a new message (figures a few times a second),
save it, stop it (Esc), regenerate it, take the last prompt back to edit.
A mixin of ChatScreen (chat_screen.py), which holds the state these methods use.

NOTE: one answer streams at a time (`self.answering` holds its request id). Actions that
change the messages refuse while it streams; Esc stops it first.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from textual import work
from textual.actions import SkipAction

from localllm.tui.backend import BackendError
from localllm.tui.conversation import ASSISTANT, USER, Message
from localllm.tui.turn import TurnStats, stream_answer
from localllm.tui.widgets.prompt import PromptArea

ABORT_GRACE_SECONDS = 3.0  # after Esc, how long the backend may take to confirm the abort
FIGURES_INTERVAL = 0.3  # seconds between updates of the live figures while an answer streams


class AnsweringMixin:
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
