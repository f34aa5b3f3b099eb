"""Sending a message: the prompt box's Enter, the context-overflow check and its dialog (drop
the oldest turns, or a new chat), and a message sent while the model was still loading.
A mixin of ChatScreen (chat_screen.py), which holds the state these methods use.

NOTE: the overflow check runs in a thread: it may count several times (once per dropped turn),
and with a server (`--url`) each count is an HTTP request, which must not stall the event loop.
The screen's handlers wait for it (Textual runs them one at a time), so nothing else is sent
meanwhile; the screen keeps drawing.
"""

from __future__ import annotations

import asyncio

from localllm.tui.backend import BackendError
from localllm.tui.conversation import USER, Conversation, Message
from localllm.tui.overflow import Overflow, check_context
from localllm.tui.screens.dialogs import ChoiceDialog
from localllm.tui.widgets.prompt import PromptArea

NEW_CHAT_TITLE = Conversation().title


class SendingMixin:
    async def on_prompt_area_submitted(self, event: PromptArea.Submitted) -> None:
        text = event.text
        if not text.strip() or self._busy():
            return
        if self.app.load_error is not None:
            self.notify(f"no model to answer: {self.app.load_error}", severity="error")
            return
        if self.app.info is not None and not await self._fits(text):
            return  # the overflow dialog takes it from here
        if self._busy():
            return  # an answer started while the check ran (from the palette)
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

    async def _overflow(self, conversation: Conversation, text: str) -> Overflow | None:
        try:
            return await asyncio.to_thread(check_context, self.app.backend.count_tokens, conversation, text,
                                           self.app.info.max_model_len)
        except BackendError:
            return None  # sending shows the template error

    async def _fits(self, text: str) -> bool:
        """False (and the overflow dialog is up, or an error shown) when the prompt plus max
        tokens would not fit in the context."""
        overflow = await self._overflow(self.conversation, text)
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
        if self.prompt.text == text:
            self.prompt.clear()
        await self._send(text)

    async def send_waiting(self) -> None:
        """The model is ready: answer the message sent while it loaded, if it fits; else take it
        back out and ask, as for a message sent now (its text back in an empty prompt box)."""
        conversation = self.conversation
        if not conversation.messages or conversation.messages[-1].role != USER:
            return  # the chat was cleared or changed while the model loaded: nothing waits
        pending = conversation.messages[-1]
        before = Conversation(system=conversation.system, settings=conversation.settings,
                              messages=conversation.messages[:-1])
        if await self._overflow(before, pending.content) is None:
            self._start_answer()
            return
        await self._remove([pending])
        if not self.prompt.text.strip():
            self.prompt.load_text(pending.content)
        await self._fits(pending.content)

