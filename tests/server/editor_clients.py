"""How Continue, Cline and Zed read the server's answers, restated in Python for the replay tests
(test_editor_replay.py). Each reader is as strict as the client's own parser: a field the client
requires must be there with its type, and the reader fails where the client would.

Sources read (our own code; nothing copied):
- Continue: core/llm/llms/Ollama.ts (ensureModelInfo, _streamChat, _streamFim),
  core/llm/openaiTypeConverters.ts (fromChatCompletionChunk),
  packages/openai-adapters/src/apis/OpenAI.ts (chatCompletionStream), core/llm/llms/OpenAI.ts
  (_legacystreamComplete, listModels) in continuedev/continue.
- Cline: @ai-sdk/openai-compatible's chunk schema and tool-call buffering
  (vercel/ai packages/openai-compatible/src/chat/openai-compatible-chat-language-model.ts), and
  ollama-ai-provider-v2's response schema (nordwestt/ollama-ai-provider-v2
  src/responses/ollama-responses-language-model.ts), both used by cline/cline
  sdk/packages/llms/src/providers/vendors/{openai-compatible,ollama}.ts.
- Zed: crates/ollama/src/ollama.rs (ChatResponseDelta, LocalModelListing, ModelShow),
  crates/open_ai/src/open_ai.rs (ResponseStreamEvent) and crates/open_ai/src/completion.rs
  (OpenAiEventMapper) in zed-industries/zed.
"""

from __future__ import annotations

import json
import re

# ---------------------------------------------------------------- shared


def sse_data(text: str) -> list:
    """`data:` payloads up to [DONE] (all three clients read SSE this way)."""
    out = []
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        out.append(json.loads(payload))
    return out


def _opt(obj: dict, key: str, *types) -> None:
    """An optional (serde Option / zod nullish) field: absent, null or of `types`."""
    value = obj.get(key)
    assert value is None or isinstance(value, types), f"{key}: {value!r} is not {types}"


def _uint(obj: dict, key: str, optional: bool = False) -> None:
    value = obj.get(key)
    if optional and value is None:
        return
    assert isinstance(value, int) and not isinstance(value, bool) and value >= 0, (key, obj)


# ---------------------------------------------------------------- Continue


def continue_show(body: dict) -> dict:
    """Ollama.ts ensureModelInfo: `num_ctx` and `stop` from `parameters`, FIM from `.Suffix`."""
    info = {"context_length": None, "stop": [], "fim": ".Suffix" in (body.get("template") or "")}
    for line in (body.get("parameters") or "").split("\n"):
        match = re.match(r'^(\S+)\s+((?:".*")|\S+)$', line)
        if not match:
            continue
        key, value = match.groups()
        if key == "num_ctx":
            info["context_length"] = int(value)
        elif key == "stop":
            info["stop"].append(json.loads(value))
    return info


def continue_ollama_chat(ndjson: str) -> list[dict]:
    """Ollama.ts _streamChat: each line is a message; "error" throws; tool_calls get an id and
    JSON-string arguments."""
    messages = []
    for line in ndjson.split("\n"):
        if not line.strip():
            continue
        chunk = json.loads(line)
        assert "error" not in chunk, chunk["error"]
        message = chunk["message"]
        assert message["role"] == "assistant"
        out = {"role": "assistant", "content": message["content"]}
        if message.get("tool_calls"):
            out["toolCalls"] = [{"name": c["function"]["name"], "arguments": json.dumps(c["function"]["arguments"])}
                                for c in message["tool_calls"]]
        messages.append(out)
    return messages


def continue_ollama_generate(ndjson: str) -> str:
    """Ollama.ts _streamComplete / _streamFim: the `response` of every line."""
    text = ""
    for line in ndjson.split("\n"):
        if line.strip():
            chunk = json.loads(line)
            assert "error" not in chunk, chunk["error"]
            text += chunk.get("response") or ""
    return text


def continue_openai_chat(sse: str) -> tuple[str, list[dict], dict | None]:
    """openai-adapters chatCompletionStream + fromChatCompletionChunk: usage chunks are held to
    the end; content and tool-call deltas become messages. (text, tool-call deltas, usage)"""
    text, tool_deltas, usage = "", [], None
    for chunk in sse_data(sse):
        if chunk.get("usage"):
            usage = chunk["usage"]
            continue
        delta = (chunk.get("choices") or [{}])[0].get("delta") or {}
        if delta.get("content"):
            text += delta["content"]
        elif delta.get("tool_calls"):
            tool_deltas += [d for d in delta["tool_calls"] if d.get("type") in (None, "function")]
    return text, tool_deltas, usage


def continue_legacy_completion(sse: str) -> str:
    """OpenAI.ts _legacystreamComplete: choices[0].text of every event."""
    return "".join(chunk["choices"][0]["text"] for chunk in sse_data(sse) if chunk["choices"] and chunk["choices"][0].get("text"))


# ---------------------------------------------------------------- Cline


def cline_openai_compatible_stream(sse: str) -> dict:
    """@ai-sdk/openai-compatible doStream: every chunk must match its schema (tool-call deltas
    need a `function` object); tool calls are buffered by index until named, then their
    arguments accumulate, and a call is done once its arguments parse as JSON. Returns text,
    finished calls, finish reason and usage."""
    text, calls, finish, usage = "", {}, None, None
    for chunk in sse_data(sse):
        if "error" in chunk:
            raise AssertionError(chunk["error"])
        assert isinstance(chunk["choices"], list)
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
            for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                _opt(usage, key, int)
        if not chunk["choices"]:
            continue
        choice = chunk["choices"][0]
        _opt(choice, "finish_reason", str)
        finish = choice.get("finish_reason") or finish
        delta = choice.get("delta")
        if delta is None:
            continue
        assert delta.get("role") in (None, "assistant", ""), delta
        _opt(delta, "content", str)
        text += delta.get("content") or ""
        for d in delta.get("tool_calls") or []:
            assert isinstance(d["function"], dict), d  # required by the chunk schema
            _opt(d, "index", int)
            _opt(d, "id", str)
            _opt(d["function"], "name", str)
            _opt(d["function"], "arguments", str)
            call = calls.setdefault(d["index"], {"id": None, "name": None, "arguments": "", "done": False})
            assert not (call["done"] and d["function"].get("arguments")), f"arguments after the call was complete: {d}"
            call["id"] = call["id"] or d.get("id")
            call["name"] = call["name"] or d["function"].get("name")
            call["arguments"] += d["function"].get("arguments") or ""
            if call["name"] and call["arguments"]:
                try:
                    json.loads(call["arguments"])
                    call["done"] = True
                except json.JSONDecodeError:
                    pass
    return {"text": text, "calls": list(calls.values()), "finish_reason": finish, "usage": usage}


def cline_ollama_line(chunk: dict) -> None:
    """ollama-ai-provider-v2's baseOllamaResponseSchema (every line but `{"error": ...}`)."""
    if "error" in chunk:
        raise AssertionError(chunk["error"])
    assert isinstance(chunk["model"], str) and isinstance(chunk["created_at"], str) and isinstance(chunk["done"], bool)
    message = chunk["message"]
    assert isinstance(message["content"], str) and isinstance(message["role"], str)
    _opt(message, "thinking", str)
    for call in message.get("tool_calls") or []:
        assert isinstance(call["function"]["name"], str) and isinstance(call["function"]["arguments"], dict)
        _opt(call, "id", str)
    _opt(chunk, "done_reason", str)
    for key in ("eval_count", "eval_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "total_duration"):
        _opt(chunk, key, int, float)


# ---------------------------------------------------------------- Zed


def zed_ollama_chat_delta(chunk: dict) -> dict:
    """ollama.rs ChatResponseDelta: model, created_at, message (tagged by role), done; Option
    done_reason / prompt_eval_count / eval_count (u64). Tool calls are an externally tagged
    enum: `{"function": {...}}` with no other key."""
    assert isinstance(chunk["model"], str) and isinstance(chunk["created_at"], str) and isinstance(chunk["done"], bool)
    _opt(chunk, "done_reason", str)
    _uint(chunk, "prompt_eval_count", optional=True)
    _uint(chunk, "eval_count", optional=True)
    message = chunk["message"]
    assert message["role"] in ("assistant", "user", "system", "tool")
    assert isinstance(message["content"], str)
    if message["role"] == "assistant":
        _opt(message, "thinking", str)
        for call in message.get("tool_calls") or []:
            assert set(call) == {"function"}, call
            assert isinstance(call["function"]["name"], str) and "arguments" in call["function"]
    return chunk


def zed_ollama_tags(body: dict) -> list[str]:
    """ollama.rs LocalModelsResponse / LocalModelListing / ModelDetails."""
    names = []
    for m in body["models"]:
        assert isinstance(m["name"], str) and isinstance(m["modified_at"], str) and isinstance(m["digest"], str)
        _uint(m, "size")
        details = m["details"]
        for key in ("format", "family", "parameter_size", "quantization_level"):
            assert isinstance(details[key], str), key
        _opt(details, "families", list)
        names.append(m["name"])
    return names


def zed_openai_stream(sse: str) -> dict:
    """open_ai.rs ResponseStreamEvent (or `{"error": {"message"}}`) and completion.rs
    OpenAiEventMapper: tool calls by index, finished only on finish_reason "tool_calls"."""
    text, raw_calls, events, usage = "", {}, [], None
    for chunk in sse_data(sse):
        if "error" in chunk and "choices" not in chunk:
            raise AssertionError(chunk["error"]["message"])
        assert isinstance(chunk["choices"], list)
        if chunk.get("usage") is not None:
            for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                _uint(chunk["usage"], key)
            usage = chunk["usage"]
        if not chunk["choices"]:
            continue
        choice = chunk["choices"][0]
        _uint(choice, "index")
        delta = choice.get("delta")
        if delta is not None:
            assert delta.get("role") in (None, "user", "assistant", "system", "tool")
            _opt(delta, "content", str)
            text += delta.get("content") or ""
            for d in delta.get("tool_calls") or []:
                _uint(d, "index")  # required (usize)
                _opt(d, "id", str)
                entry = raw_calls.setdefault(d["index"], {"id": "", "name": "", "arguments": ""})
                entry["id"] = d.get("id") or entry["id"]
                function = d.get("function") or {}
                entry["name"] = function.get("name") or entry["name"]
                entry["arguments"] += function.get("arguments") or ""
        reason = choice.get("finish_reason")
        if reason == "tool_calls":
            events += [("tool_use", c["id"], c["name"], json.loads(c["arguments"])) for _, c in sorted(raw_calls.items())]
            raw_calls.clear()
            events.append(("stop", "tool_use"))
        elif reason is not None:
            events.append(("stop", "end_turn"))
    return {"text": text, "events": events, "usage": usage}
