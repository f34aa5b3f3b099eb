"""Replays of what Continue, Cline and Zed send, byte for byte in shape, read back the way each of
them reads it (tests/server/editor_clients.py). The editors cannot run here; their requests can.

Where each request shape comes from (read, not copied):
- Continue (continuedev/continue): core/llm/llms/Ollama.ts (/api/show, _streamChat,
  _streamComplete, _streamFim, _getModelFileParams: num_ctx from /api/show, num_predict =
  maxTokens, 4096 unless configured, core/llm/constants.ts), core/llm/openaiTypeConverters.ts
  (toChatBody, toChatMessage: empty assistant content sent as " "), core/llm/llms/OpenAI.ts
  (modifyChatBody: parallel_tool_calls false with tools; _legacystreamComplete for autocomplete,
  which core/autocomplete/CompletionProvider.ts forces on for the openai provider; listModels),
  packages/openai-adapters/src/apis/OpenAI.ts (stream_options.include_usage on every stream).
- Cline (cline/cline): sdk/packages/llms/src/providers/vendors/openai-compatible.ts
  (@ai-sdk/openai-compatible with includeUsage; body built in vercel/ai
  packages/openai-compatible/src/chat/openai-compatible-chat-language-model.ts),
  sdk/packages/llms/src/providers/vendors/ollama.ts (ollama-ai-provider-v2, patched by
  patches/ollama-ai-provider-v2@4.0.1.patch; body built in nordwestt/ollama-ai-provider-v2
  src/responses/ollama-responses-language-model.ts: temperature, top_p, max_output_tokens and
  tool_choice at the top level; options.num_ctx from provider-option-rules.ts),
  apps/vscode/src/core/controller/models/{refreshOpenAiModels,getOllamaModels}.ts.
- Zed (zed-industries/zed): crates/ollama/src/ollama.rs (ChatRequest: keep_alive -1, options
  with nulls, tools always a list, think), crates/language_models/src/provider/ollama.rs
  (to_ollama_request: num_ctx = max_tokens, temperature 1.0, stop []),
  crates/ollama/src/ollama_edit_prediction_delegate.rs (raw FIM /api/generate, stream false),
  crates/open_ai/src/completion.rs (into_open_ai: stream_options, max_completion_tokens,
  temperature 1.0, tools with description) and crates/open_ai/src/open_ai.rs (Request).
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.server import editor_clients as clients

TOOL_PIECES = ["I", " will", " check.", "\n<tool_call>\n", '{"name": "read_file", ', '"arguments": {"path": ',
               '"src/main.py"}}', "\n</tool_call>"]
READ_FILE = {"name": "read_file", "description": "Read a file in the workspace",
             "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}


def editor_reply(prompt: str, params) -> list[str]:
    if "<tool_response>" in prompt:
        return ["The", " file", " prints", " hello", "."]
    if "<tools>" in prompt:
        return TOOL_PIECES
    return ["Hello", " from", " the", " fake", " engine", "."]


def post(server, path: str, body: dict, headers: dict | None = None) -> httpx.Response:
    response = httpx.post(server.url + path, content=json.dumps(body), headers={"Content-Type": "application/json", **(headers or {})},
                          timeout=30)
    assert response.status_code == 200, response.text
    return response


# ---------------------------------------------------------------- Continue


def test_continue_ollama_provider_show_chat_tools_and_fim(fake_server):
    server = fake_server(reply=editor_reply, max_model_len=2048, fim=True)
    headers = {"Authorization": "Bearer unused"}
    info = clients.continue_show(post(server, "/api/show", {"name": "fake"}, headers).json())
    assert info == {"context_length": 2048, "stop": [], "fim": True}
    # _streamChat with Continue's defaults: num_predict = 4096 (DEFAULT_MAX_TOKENS) and num_ctx =
    # the context /api/show gave. Ollama treats num_predict as a cap; so must we.
    options = {"temperature": 0.5, "num_predict": 4096, "num_ctx": info["context_length"], "stop": ["<|im_end|>"]}
    chat = {"model": "fake", "messages": [{"role": "system", "content": "You are a coding assistant."},
                                          {"role": "user", "content": "What does main.py do?"}],
            "options": options, "keep_alive": 1800, "stream": True,
            "tools": [{"type": "function", "function": READ_FILE}]}
    messages = clients.continue_ollama_chat(post(server, "/api/chat", chat, headers).text)
    assert "".join(m["content"] for m in messages) == "I will check.\n"
    [call] = [c for m in messages for c in m.get("toolCalls", [])]
    assert call == {"name": "read_file", "arguments": json.dumps({"path": "src/main.py"})}
    assert server.engine.added[-1].params.max_tokens == 2048 - len(server.engine.added[-1].prompt_token_ids)
    # The next turn: the call (arguments an object, no id) and its result; no tools (Continue only
    # sends them when the last message is the user's).
    chat["messages"] += [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "read_file", "arguments": {"path": "src/main.py"}}}]},
        {"role": "tool", "content": "print('hello')"}]
    del chat["tools"]
    messages = clients.continue_ollama_chat(post(server, "/api/chat", chat, headers).text)
    assert "".join(m["content"] for m in messages) == "The file prints hello."
    # Tab autocomplete: the model's template shows .Suffix, so _streamFim sends prefix + suffix.
    fim = {"model": "fake", "prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))",
           "options": {"temperature": 0.01, "num_predict": 4096, "stop": ["\n\n", "```"], "num_ctx": 2048},
           "keep_alive": 1800}
    assert clients.continue_ollama_generate(post(server, "/api/generate", fim, headers).text) == "Hello from the fake engine."
    assert server.engine.added[-1].prompt.startswith("<|fim_prefix|>def add(a, b):")
    # A model without .Suffix gets its prompt templated by Continue and sent with raw: true.
    raw = {"model": "fake", "prompt": "<fim_prefix>x = <fim_suffix>\n<fim_middle>", "raw": True,
           "options": {"temperature": 0.01, "num_predict": 256, "stop": ["\n"], "num_ctx": 2048}, "keep_alive": 1800}
    assert clients.continue_ollama_generate(post(server, "/api/generate", raw).text) == "Hello from the fake engine."
    assert server.engine.added[-1].prompt == raw["prompt"]


def test_continue_openai_provider_chat_tools_autocomplete_and_models(fake_server):
    server = fake_server(reply=editor_reply, max_model_len=8192)
    headers = {"Authorization": "Bearer unused", "api-key": "unused", "x-api-key": "unused"}
    assert [m["id"] for m in httpx.get(server.url + "/v1/models", headers=headers).json()["data"]] == ["fake"]
    tools = [{"type": "function", "function": {**READ_FILE, "strict": None}}]
    body = {"messages": [{"role": "system", "content": "You are a coding assistant."},
                         {"role": "user", "content": "What does main.py do?"}],
            "model": "fake", "max_tokens": 1024, "temperature": 0.5, "stream": True, "stop": ["<|im_end|>"],
            "stream_options": {"include_usage": True}, "tools": tools, "parallel_tool_calls": False}
    text, tool_deltas, usage = clients.continue_openai_chat(post(server, "/v1/chat/completions", body, headers).text)
    assert text == "I will check.\n"
    assert tool_deltas[0]["id"].startswith("call_") and tool_deltas[0]["function"]["name"] == "read_file"
    assert json.loads("".join(d["function"]["arguments"] for d in tool_deltas)) == {"path": "src/main.py"}
    assert usage["completion_tokens"] == len(TOOL_PIECES) and usage["prompt_tokens"] > 0
    # The next turn as toChatMessage writes it: empty assistant content as " ", then the result.
    body["messages"] += [
        {"role": "assistant", "content": " ", "tool_calls": [
            {"id": tool_deltas[0]["id"], "type": "function",
             "function": {"name": "read_file", "arguments": '{"path": "src/main.py"}'}}]},
        {"role": "tool", "content": "print('hello')", "tool_call_id": tool_deltas[0]["id"]}]
    text, tool_deltas, _ = clients.continue_openai_chat(post(server, "/v1/chat/completions", body, headers).text)
    assert text == "The file prints hello." and tool_deltas == []
    # Autocomplete: /v1/completions with the model-templated FIM prompt, streamed, no messages.
    completion = {"model": "fake", "max_tokens": 256, "temperature": 0.01, "stream": True,
                  "stop": ["<|endoftext|>", "\n\n", "/src/", "```"], "prompt": "<|fim_prefix|>x = <|fim_suffix|>\n<|fim_middle|>"}
    assert clients.continue_legacy_completion(post(server, "/v1/completions", completion, headers).text) == "Hello from the fake engine."


# ---------------------------------------------------------------- Cline


def test_cline_openai_compatible_provider(fake_server):
    server = fake_server(reply=editor_reply, max_model_len=8192)
    headers = {"Authorization": "Bearer unused"}
    assert [m["id"] for m in httpx.get(server.url + "/v1/models", headers=headers).json()["data"]] == ["fake"]
    body = {"model": "fake", "max_tokens": 1024, "temperature": 0,
            "messages": [{"role": "system", "content": "You are Cline."},
                         {"role": "user", "content": [{"type": "text", "text": "<task>Explain main.py</task>"}]}],
            "tools": [{"type": "function", "function": READ_FILE}], "tool_choice": "auto",
            "stream": True, "stream_options": {"include_usage": True}}
    read = clients.cline_openai_compatible_stream(post(server, "/v1/chat/completions", body, headers).text)
    assert read["text"] == "I will check.\n" and read["finish_reason"] == "tool_calls"
    [call] = read["calls"]
    assert call["done"] and call["name"] == "read_file" and json.loads(call["arguments"]) == {"path": "src/main.py"}
    assert read["usage"]["completion_tokens"] == len(TOOL_PIECES)
    body["messages"] += [
        {"role": "assistant", "content": "I will check.\n", "tool_calls": [
            {"id": call["id"], "type": "function", "function": {"name": "read_file", "arguments": call["arguments"]}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": "print('hello')"}]
    read = clients.cline_openai_compatible_stream(post(server, "/v1/chat/completions", body, headers).text)
    assert read["text"] == "The file prints hello." and read["calls"] == [] and read["finish_reason"] == "stop"


def test_cline_ollama_provider(fake_server):
    server = fake_server(reply=editor_reply, max_model_len=2048)
    assert [m["name"] for m in httpx.get(server.url + "/api/tags").json()["models"]] == ["fake:latest"]
    # ollama-ai-provider-v2 puts temperature, top_p, max_output_tokens and tool_choice at the top
    # level (Ollama ignores them there); Cline's context window goes in options.num_ctx.
    body = {"model": "fake:latest",
            "messages": [{"role": "system", "content": "You are Cline."}, {"role": "user", "content": "Explain main.py"}],
            "temperature": 0, "max_output_tokens": 8192,
            "tools": [{"type": "function", "function": {**READ_FILE, "strict": False}}], "tool_choice": "auto",
            "options": {"num_ctx": 32768}, "stream": True}
    lines = [json.loads(line) for line in post(server, "/api/chat", body).text.splitlines()]
    for line in lines:
        clients.cline_ollama_line(line)
    [call] = [c for line in lines for c in line["message"].get("tool_calls") or []]
    assert call["function"] == {"name": "read_file", "arguments": {"path": "src/main.py"}}
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "stop"
    # The next turn as the provider (with Cline's patch) writes it: calls with ids, results with
    # tool_call_id and tool_name.
    body["messages"] += [
        {"role": "assistant", "content": "I will check.\n", "tool_calls": [
            {"id": "call-1", "type": "function", "function": {"name": "read_file", "arguments": {"path": "src/main.py"}}}]},
        {"role": "tool", "tool_call_id": "call-1", "tool_name": "read_file", "content": "print('hello')"}]
    lines = [json.loads(line) for line in post(server, "/api/chat", body).text.splitlines()]
    for line in lines:
        clients.cline_ollama_line(line)
    assert "".join(line["message"]["content"] for line in lines) == "The file prints hello."


# ---------------------------------------------------------------- Zed


def test_zed_ollama_provider_and_edit_predictions(fake_server):
    server = fake_server(reply=editor_reply, max_model_len=2048)
    [name] = clients.zed_ollama_tags(httpx.get(server.url + "/api/tags", headers={"Accept": "application/json"}).json())
    show = post(server, "/api/show", {"model": name}).json()
    assert "tools" in show["capabilities"]  # Zed sends tools only to models whose capabilities say so
    tool = {"type": "function", "function": {"name": READ_FILE["name"], "description": READ_FILE["description"],
                                             "parameters": READ_FILE["parameters"]}}
    chat = {"model": name, "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                        {"role": "user", "content": "What does main.py do?"}],
            "stream": True, "keep_alive": -1,
            "options": {"num_ctx": 4096, "num_predict": None, "stop": [], "temperature": 1.0, "top_p": None},
            "tools": [tool], "think": False}
    deltas = [clients.zed_ollama_chat_delta(json.loads(line)) for line in post(server, "/api/chat", chat).text.splitlines()]
    [call] = [c for d in deltas for c in d["message"].get("tool_calls") or []]
    assert call == {"function": {"name": "read_file", "arguments": {"path": "src/main.py"}}}
    assert deltas[-1]["done"] and deltas[-1]["prompt_eval_count"] > 0 and deltas[-1]["eval_count"] == len(TOOL_PIECES)
    # The next turn: Zed always sends tool_calls (a list) and thinking on assistant messages, and
    # tool results with tool_name.
    chat["messages"] += [
        {"role": "assistant", "content": "I will check.\n", "tool_calls": [
            {"function": {"name": "read_file", "arguments": {"path": "src/main.py"}}}], "thinking": None},
        {"role": "tool", "tool_name": "read_file", "content": "print('hello')"}]
    deltas = [clients.zed_ollama_chat_delta(json.loads(line)) for line in post(server, "/api/chat", chat).text.splitlines()]
    assert "".join(d["message"]["content"] for d in deltas) == "The file prints hello."
    # Edit predictions: a raw FIM prompt in the model's format, not streamed.
    prediction = {"model": name, "prompt": "<fim_prefix>def add(a, b):\n    <fim_suffix>\n<fim_middle>", "raw": True,
                  "stream": False, "options": {"num_predict": 64, "temperature": 0.2, "stop": ["<|endoftext|>", "<fim_prefix>", "[SUFFIX]"]}}
    assert post(server, "/api/generate", prediction).json()["response"] == "Hello from the fake engine."
    assert server.engine.added[-1].params.max_tokens == 64


def test_zed_openai_compatible_provider(fake_server):
    server = fake_server(reply=editor_reply, max_model_len=8192)
    headers = {"Authorization": "Bearer unused"}  # Zed always sends it, with LOCALLLM_API_KEY's value
    tool = {"type": "function", "function": {"name": READ_FILE["name"], "description": READ_FILE["description"],
                                             "parameters": READ_FILE["parameters"]}}
    body = {"model": "fake", "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                          {"role": "user", "content": "What does main.py do?"}],
            "stream": True, "stream_options": {"include_usage": True}, "max_completion_tokens": 1024,
            "temperature": 1.0, "tool_choice": "auto", "tools": [tool], "prompt_cache_key": "thread-1"}
    read = clients.zed_openai_stream(post(server, "/v1/chat/completions", body, headers).text)
    assert read["text"] == "I will check.\n"
    [(kind, call_id, name, arguments), stop] = read["events"]
    assert kind == "tool_use" and name == "read_file" and arguments == {"path": "src/main.py"} and stop == ("stop", "tool_use")
    assert read["usage"]["completion_tokens"] == len(TOOL_PIECES)
    # The next turn as into_open_ai writes it: the call with null content, multipart text parts.
    body["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "read_file", "arguments": '{"path":"src/main.py"}'}}]},
        {"role": "tool", "content": [{"type": "text", "text": "print('hello')"}], "tool_call_id": call_id}]
    read = clients.zed_openai_stream(post(server, "/v1/chat/completions", body, headers).text)
    assert read["text"] == "The file prints hello." and read["events"] == [("stop", "end_turn")]


# ---------------------------------------------------------------- on the real model


@pytest.mark.slow
def test_editor_requests_on_smollm2(real_server):
    url, name = real_server.url, real_server.model
    # Continue's Ollama chat with its defaults (num_predict 4096 > the 2048-token context), stopped
    # by the user after a few lines: Continue aborts the fetch.
    chat = {"model": name, "messages": [{"role": "user", "content": "Write a long story about a cat."}],
            "options": {"temperature": 0.5, "num_predict": 4096, "num_ctx": 2048}, "keep_alive": 1800, "stream": True}
    with httpx.stream("POST", url + "/api/chat", json=chat, timeout=120) as response:
        assert response.status_code == 200, response.read()
        lines = []
        for line in response.iter_lines():
            lines.append(line)
            if len(lines) == 3:
                break
    assert clients.continue_ollama_chat("\n".join(lines))
    # Zed's OpenAI-compatible stream, with its usage chunk.
    body = {"model": name, "messages": [{"role": "user", "content": "Say hi."}], "stream": True,
            "stream_options": {"include_usage": True}, "max_completion_tokens": 8, "temperature": 1.0}
    read = clients.zed_openai_stream(post_url(url, "/v1/chat/completions", body).text)
    assert read["text"] and read["events"] == [("stop", "end_turn")] and 0 < read["usage"]["completion_tokens"] <= 8
    # Cline's Ollama provider, top-level fields and all.
    cline = {"model": f"{name}:latest", "messages": [{"role": "user", "content": "Say hi."}], "temperature": 0,
             "max_output_tokens": 8, "options": {"num_ctx": 32768, "num_predict": 8}, "stream": True}
    for line in post_url(url, "/api/chat", cline).text.splitlines():
        clients.cline_ollama_line(json.loads(line))
    real_server.wait_idle()  # the dropped stream was aborted and its blocks freed


def post_url(url: str, path: str, body: dict) -> httpx.Response:
    response = httpx.post(url + path, json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response
