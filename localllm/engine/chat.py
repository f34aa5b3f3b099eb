"""Chat messages -> prompt text through the model's own chat template."""

from __future__ import annotations

from localllm.errors import LocalLLMError

_ROLES = {"system", "user", "assistant", "tool", "developer"}


def validate_messages(messages: list[dict]) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError(f"messages[{i}] must be an object with a 'role'")
        if message["role"] not in _ROLES:
            raise ValueError(f"messages[{i}].role {message['role']!r} is not one of {sorted(_ROLES)}")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise ValueError(f"messages[{i}].content must be a string")


def render_chat(tokenizer, chat_template: str | None, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
    validate_messages(messages)
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise LocalLLMError("this model has no chat template: use a plain prompt (--raw / llm.generate)")
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )
