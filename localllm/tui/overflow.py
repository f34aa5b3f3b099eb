"""Will the next turn fit in the context? If not, what would make it fit: dropping how many of
the oldest turns, or a new chat. The chat screen asks the user; nothing is cut silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from localllm.tui.conversation import Conversation


@dataclass(frozen=True)
class Overflow:
    num_prompt_tokens: int  # the whole chat plus the new message
    max_tokens: int  # room the answer may take
    max_model_len: int
    num_turns_to_drop: int | None  # the fewest oldest turns to drop so it fits; None: no number does
    num_alone_tokens: int  # the new message in a new chat (with the system prompt)

    @property
    def fits_in_new_chat(self) -> bool:
        return self.num_alone_tokens + self.max_tokens <= self.max_model_len

    def explain(self) -> str:
        need = self.num_prompt_tokens + self.max_tokens
        text = (f"This turn needs {self.num_prompt_tokens} prompt tokens + up to {self.max_tokens} for the "
                f"answer = {need}, more than the context length {self.max_model_len}. ")
        if self.num_turns_to_drop:
            return text + (f"Send it after dropping {self.turns_to_drop()} of this chat (d), or in a new "
                           "chat (n)? Nothing is cut without asking.")
        return text + "Send it in a new chat (n)?"

    def turns_to_drop(self) -> str:
        n = self.num_turns_to_drop or 0
        return f"the oldest {n} turn{'s' * (n != 1)}"


def check_context(count_tokens: Callable[[list[dict]], int | None], conversation: Conversation, text: str,
                  max_model_len: int | None) -> Overflow | None:
    """None when the turn fits (or the backend cannot count, or the context is unknown)."""
    new = {"role": "user", "content": text}
    max_tokens = conversation.settings.max_tokens
    count = count_tokens(conversation.prompt_messages() + [new]) if max_model_len else None
    if count is None or count + max_tokens <= max_model_len:
        return None
    trial = Conversation(system=conversation.system, messages=list(conversation.messages))
    num_dropped, fits_after = 0, None
    while trial.num_turns() > 0 and fits_after is None:
        trial.drop_oldest_turn()
        num_dropped += 1
        if count_tokens(trial.prompt_messages() + [new]) + max_tokens <= max_model_len:
            fits_after = num_dropped
    alone = count_tokens(Conversation(system=conversation.system).prompt_messages() + [new])
    return Overflow(count, max_tokens, max_model_len, fits_after, alone)
