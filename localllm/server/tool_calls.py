"""Tool calls: how a model is told about tools, and how its calls are read back from its text.

Two output formats, chosen from the model's chat template:
- Hermes (Qwen2.5/Qwen3, Hermes, and every template that knows no tools, which get the tools in a
  system prompt written the way Qwen's template writes them):
  `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, one block per call.
- Llama 3.x JSON: the whole answer is `{"name": ..., "parameters": {...}}` (optionally after
  `<|python_tag|>`, several separated by `;`).

A forced call (tool_choice "required" or a named function) is constrained decoding of one call
object in the model's own format, so its arguments follow the tool's schema.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from dataclasses import dataclass, field


class ToolFormat(enum.Enum):
    HERMES = "hermes"
    LLAMA3_JSON = "llama3_json"


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str | None
    parameters: dict

    def openai_dict(self) -> dict:
        function = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass
class ToolCall:
    name: str
    arguments: dict
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass(frozen=True)
class ToolPlan:
    """What a request asked for: the tools, the model's format, and whether a call is forced
    (None: the model decides; "" : any tool, "required"; a name: that tool)."""

    tools: tuple[ToolSpec, ...]
    format: ToolFormat
    template_renders_tools: bool
    forced: str | None = None

    @property
    def names(self) -> set[str]:
        return {t.name for t in self.tools}

    def forced_schema(self) -> dict:
        key = "parameters" if self.format is ToolFormat.LLAMA3_JSON else "arguments"
        chosen = [t for t in self.tools if not self.forced or t.name == self.forced]
        options = [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, key: t.parameters or {"type": "object"}},
                "required": ["name", key],
            }
            for t in chosen
        ]
        return options[0] if len(options) == 1 else {"anyOf": options}


def detect_tool_format(chat_template: str | None) -> tuple[ToolFormat, bool]:
    """(format, whether the template itself renders `tools`)."""
    template = chat_template or ""
    renders = "tools" in template
    if "<|python_tag|>" in template or "ipython" in template:
        return ToolFormat.LLAMA3_JSON, renders
    return ToolFormat.HERMES, renders and "<tool_call>" in template


def tools_system_prompt(tools: tuple[ToolSpec, ...]) -> str:
    """For templates that know no tools: Qwen2.5's own wording of the Hermes format."""
    lines = "\n".join(json.dumps(t.openai_dict(), ensure_ascii=False) for t in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{lines}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def hermes_call_text(name: str, arguments: dict) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n</tool_call>"


# ---------------------------------------------------------------- parsing

HERMES_MARKER = "<tool_call>"
_HERMES_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
PYTHON_TAG = "<|python_tag|>"


def _call_from_object(obj, names: set[str]) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or obj["name"] not in names:
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    return ToolCall(obj["name"], arguments) if isinstance(arguments, dict) else None


def _parse_hermes(text: str, names: set[str]) -> tuple[str, list[ToolCall]] | None:
    start = text.find(HERMES_MARKER)
    if start < 0:
        return None
    calls = []
    for block in _HERMES_BLOCK.findall(text, start):
        try:
            call = _call_from_object(json.loads(block), names)
        except json.JSONDecodeError:
            return None
        if call is None:
            return None
        calls.append(call)
    return (text[:start].strip(), calls) if calls else None


def _parse_llama3(text: str, names: set[str]) -> tuple[str, list[ToolCall]] | None:
    body = text.strip().removeprefix(PYTHON_TAG).strip()
    if not body.startswith("{"):
        return None
    decoder = json.JSONDecoder()
    calls, pos = [], 0
    while pos < len(body):
        try:
            obj, end = decoder.raw_decode(body, pos)
        except json.JSONDecodeError:
            return None
        call = _call_from_object(obj, names)
        if call is None:
            return None
        calls.append(call)
        pos = end
        while pos < len(body) and body[pos] in " \t\r\n;":
            pos += 1
    return ("", calls) if calls else None


def parse_tool_calls(text: str, fmt: ToolFormat, names: set[str]) -> tuple[str, list[ToolCall]]:
    """(content, calls). Text that is not a well-formed call of a known tool stays content."""
    parsed = (_parse_llama3 if fmt is ToolFormat.LLAMA3_JSON else _parse_hermes)(text, names)
    return parsed if parsed is not None else (text, [])


def parse_forced_call(text: str, names: set[str]) -> ToolCall | None:
    """A forced call's output is one JSON call object (constrained); None if it was cut short."""
    try:
        return _call_from_object(json.loads(text), names)
    except json.JSONDecodeError:
        return None


class ToolCallStreamer:
    """Streams content while holding back whatever may be the start of a tool call; at the end,
    `finish` returns the content still owed and the calls found."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.text = ""
        self.sent = 0  # text[:sent] has been streamed as content
        self.in_call = False
        self.call_start = 0  # where the calls begin in text, once in_call (forced: at once)

    def feed(self, delta: str) -> str:
        self.text += delta
        if self.in_call or self.plan.forced is not None:
            return ""
        if self.plan.format is ToolFormat.LLAMA3_JSON:
            if self.sent == 0:
                head = self.text.lstrip()
                if not head or PYTHON_TAG.startswith(head[: len(PYTHON_TAG)]) and len(head) < len(PYTHON_TAG):
                    return ""  # whitespace or a partial tag: not known yet
                if head.startswith(("{", PYTHON_TAG)):
                    self.in_call = True
                    self.call_start = len(self.text) - len(head)
                    return ""
            end = len(self.text)
        else:
            found = self.text.find(HERMES_MARKER, max(0, self.sent - len(HERMES_MARKER)))
            if found >= 0:
                self.in_call = True
                self.call_start = end = found
            else:
                end = len(self.text) - _partial_suffix(self.text, HERMES_MARKER)
        out = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        if self.plan.forced is not None:
            call = parse_forced_call(self.text, self.plan.names)
            return ("", [call]) if call is not None else (self.text, [])
        content, calls = parse_tool_calls(self.text, self.plan.format, self.plan.names)
        if calls:
            return "", calls  # the content before the first call was streamed already
        return self.text[self.sent :], []


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
