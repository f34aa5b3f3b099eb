"""Chat messages -> the prompt text, through the model's own chat template.

Both APIs hand over messages in one plain form: {"role", "content": str | None, "tool_calls":
[{"id", "type": "function", "function": {"name", "arguments": dict}}], "tool_call_id", "name"}.
Templates that render tools get them as `tools`; the others get the tools in a system message and
past calls / results as Hermes-format text, so any chat model can take part in tool use.
"""

from __future__ import annotations

from localllm.server.errors import bad_request
from localllm.server.tool_calls import ToolPlan, hermes_call_text, tools_system_prompt


def _as_text_turns(message: dict) -> dict:
    """A tool call or tool result written as text, for templates that know no tools."""
    role = message["role"]
    content = message.get("content") or ""
    if role == "assistant" and message.get("tool_calls"):
        calls = "\n".join(
            hermes_call_text(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]
        )
        return {"role": "assistant", "content": f"{content}\n{calls}".strip()}
    if role == "tool":
        return {"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"}
    return {"role": role, "content": content}


def _with_tools_system_prompt(messages: list[dict], plan: ToolPlan) -> list[dict]:
    prompt = tools_system_prompt(plan.tools)
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{prompt}".strip()}
        return [first, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def render_chat_prompt(
    llm,
    messages: list[dict],
    plan: ToolPlan | None,
    template_kwargs: dict | None = None,
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
) -> str:
    """The prompt text the chat routes generate from; /tokenize renders through here too, so its
    count is the chat route's. `continue_final_message` leaves the last message open (vLLM's)."""
    if not messages:
        raise bad_request("messages must not be empty", param="messages")
    if not llm.chat_template:
        raise bad_request("this model has no chat template: send a plain prompt (completions / generate with raw)")
    kwargs = dict(template_kwargs or {})
    for key in ("tools", "messages", "add_generation_prompt", "continue_final_message", "chat_template", "tokenize"):
        if key in kwargs:
            raise bad_request(f"chat_template_kwargs may not set {key!r}", param="chat_template_kwargs")
    native = plan is not None and plan.template_renders_tools
    if native:
        msgs = [{**m, "content": m.get("content") or ""} for m in messages]
        kwargs["tools"] = [t.openai_dict() for t in plan.tools]
    else:
        msgs = [_as_text_turns(m) for m in messages]
        if plan is not None and plan.tools:
            msgs = _with_tools_system_prompt(msgs, plan)
    if continue_final_message:
        kwargs["continue_final_message"] = True  # NOTE: only when asked: older templates take no such key
    try:
        return llm.render_chat(msgs, add_generation_prompt=add_generation_prompt, **kwargs)
    except ValueError as e:  # the engine's message checks
        raise bad_request(str(e), param="messages") from None
    except Exception as e:  # noqa: BLE001 - a template's raise_exception / type errors are the request's fault
        from jinja2.exceptions import TemplateError

        if isinstance(e, (TemplateError, TypeError)):
            raise bad_request(f"the model's chat template failed on these messages: {e}", param="messages") from None
        raise
