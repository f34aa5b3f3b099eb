"""One chat: its messages, system prompt and settings, and what goes into the model's prompt.

NOTE: every turn sends the whole conversation through the chat template; the engine's prefix
cache finds the earlier turns' blocks, so only the new tokens are computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from localllm.tui.settings import ChatSettings

USER, ASSISTANT, ERROR = "user", "assistant", "error"
TITLE_LENGTH = 48


@dataclass
class Message:
    role: str  # USER | ASSISTANT | ERROR (errors are shown and stored, never sent to the model)
    content: str
    meta: dict = field(default_factory=dict)  # an answer's figures: tokens, tok/s, ttft, cached
    id: int | None = None  # the row in the store, once saved


@dataclass
class Conversation:
    id: int | None = None  # None until the first message is stored
    title: str = "New chat"
    system: str | None = None
    settings: ChatSettings = field(default_factory=ChatSettings)
    messages: list[Message] = field(default_factory=list)
    model: str | None = None  # the model it was last used with

    def prompt_messages(self) -> list[dict]:
        """System prompt, then user and assistant messages in order; errors left out."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        out += [{"role": m.role, "content": m.content} for m in self.messages if m.role in (USER, ASSISTANT)]
        return out

    def title_from(self, text: str) -> str:
        line = " ".join(text.split())
        return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1] + "…"

    def last_index(self, role: str) -> int | None:
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].role == role:
                return i
        return None

    def num_turns(self) -> int:
        return sum(1 for m in self.messages if m.role == USER)

    def drop_oldest_turn(self) -> list[Message]:
        """Remove the first user message and what follows it up to the next user message;
        returns what was removed."""
        first = next((i for i, m in enumerate(self.messages) if m.role == USER), None)
        if first is None:
            return []
        end = next((i for i in range(first + 1, len(self.messages)) if self.messages[i].role == USER),
                   len(self.messages))
        dropped = self.messages[: end]
        del self.messages[: end]
        return dropped

    def to_markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        if self.model:
            lines += [f"Model: `{self.model}`", ""]
        if self.system:
            lines += ["## System", "", self.system, ""]
        names = {USER: "User", ASSISTANT: "Assistant", ERROR: "Error"}
        for message in self.messages:
            lines += [f"## {names.get(message.role, message.role)}", "", message.content.rstrip(), ""]
        return "\n".join(lines)
