"""Tools through /v1/chat/completions and /api/chat over a scripted engine."""

from __future__ import annotations

import json

import httpx

from tests.server.sse import assert_openai_error, sse_events

CHAT = "/v1/chat/completions"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
USER = [{"role": "user", "content": "Weather in Paris?"}]
CALL_PIECES = ["Sure", ".", "\n<tool", "_call>\n", '{"name": "get_weather", "arguments": ', '{"city": "Paris"}}', "\n</tool_call>"]


def calling(prompt, params):
    return CALL_PIECES


def test_tool_call_parsed_from_the_answer(fake_server):
    server = fake_server(reply=calling)
    body = httpx.post(server.url + CHAT, json={"model": "fake", "messages": USER, "tools": TOOLS}).json()
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "Sure."
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    # A template that knows no tools gets them in a system message, in Hermes format.
    messages, kwargs = server.engine.rendered[-1]
    assert messages[0]["role"] == "system" and "<tools>" in messages[0]["content"] and '"get_weather"' in messages[0]["content"]
    assert "tools" not in kwargs


def stream_chat(server, **body) -> list[dict]:
    with httpx.stream("POST", server.url + CHAT, json={"model": "fake", "messages": USER, "stream": True, **body}) as r:
        return sse_events(r.read().decode())[:-1]


def tool_call_events(events: list[dict]) -> list[tuple[int, dict]]:
    """(event number, tool-call delta) in order."""
    return [(n, call) for n, e in enumerate(events) for call in e["choices"][0]["delta"].get("tool_calls") or []]


def accumulate(events: list[dict]) -> dict[int, dict]:
    """Tool calls rebuilt from their deltas as OpenAI's SDKs do: by index, arguments joined."""
    calls: dict[int, dict] = {}
    for _, d in tool_call_events(events):
        call = calls.setdefault(d["index"], {"id": None, "name": None, "arguments": ""})
        call["id"] = d.get("id") or call["id"]
        call["name"] = d["function"].get("name") or call["name"]
        call["arguments"] += d["function"].get("arguments") or ""
    return calls


def test_tool_call_streamed_argument_by_argument(fake_server):
    pieces = ["Sure", ".", "\n<tool", "_call>\n", '{"name": "get_', 'weather", "arg', 'uments": {"ci', 'ty": "Pa',
              'ris", "u', 'nit": "C"}}', "\n</tool_call>"]
    server = fake_server(reply=lambda p, params: pieces)
    tools = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "name": "get_weather"}}]
    events = stream_chat(server, tools=tools)
    deltas = [e["choices"][0]["delta"] for e in events]
    assert "".join(d.get("content") or "" for d in deltas) == "Sure.\n"
    ordered = tool_call_events(events)
    # OpenAI's shape: the first delta names the call (id, type, name, empty arguments) ...
    first = ordered[0][1]
    assert first == {"index": 0, "id": first["id"], "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    assert first["id"].startswith("call_")
    # ... then the arguments come in fragments, as the model writes them, without id or name.
    fragments = [d for _, d in ordered[1:]]
    assert len(fragments) >= 3 and all(set(d) == {"index", "function"} and set(d["function"]) == {"arguments"} for d in fragments)
    assert ordered[1][0] < len(events) - 1  # the first fragment went out before the final chunk
    [call] = accumulate(events).values()
    assert call["arguments"] == '{"city": "Paris", "unit": "C"}'
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # The same answer, not streamed: the same call.
    body = httpx.post(server.url + CHAT, json={"model": "fake", "messages": USER, "tools": tools}).json()
    assert json.loads(body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]) == json.loads(call["arguments"])


def test_two_streamed_calls_get_their_own_index_and_id(fake_server):
    pieces = ["<tool_call>\n", '{"name": "get_weather", "arguments": {"city": ', '"Oslo"}}', "\n</tool_call>\n",
              "<tool_call>\n", '{"name": "get_weather", ', '"arguments": {"city": "Rome"}}', "\n</tool_call>"]
    server = fake_server(reply=lambda p, params: pieces)
    events = stream_chat(server, tools=TOOLS)
    calls = accumulate(events)
    assert sorted(calls) == [0, 1] and calls[0]["id"] != calls[1]["id"]
    assert [json.loads(c["arguments"]) for c in calls.values()] == [{"city": "Oslo"}, {"city": "Rome"}]
    assert all(not e["choices"][0]["delta"].get("content") for e in events)
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_calls_the_stream_cannot_follow_early_come_when_they_can(fake_server):
    # "arguments" before "name": the call opens when its name arrives, with the arguments so far.
    pieces = ["<tool_call>\n", '{"arguments": {"city": "Lima"}, ', '"name": "get_weather"}', "\n</tool_call>"]
    server = fake_server(reply=lambda p, params: pieces)
    events = stream_chat(server, tools=TOOLS)
    [(n, opened), (m, arguments)] = tool_call_events(events)
    assert n == m < len(events) - 1 and opened["function"]["name"] == "get_weather"
    assert json.loads(arguments["function"]["arguments"]) == {"city": "Lima"}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # Arguments written as a JSON string are not followed: the call comes whole with the finish.
    pieces[:] = ["<tool_call>\n", '{"name": "get_weather", ', '"arguments": "{\\"city\\": \\"Lima\\"}"}', "\n</tool_call>"]
    events = stream_chat(server, tools=TOOLS)
    [(n, call)] = tool_call_events(events)
    assert n == len(events) - 1 and json.loads(call["function"]["arguments"]) == {"city": "Lima"}
    assert call["function"]["name"] == "get_weather" and events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # An unknown tool is no call: its text is content, as without streaming.
    pieces[:] = ["<tool_call>\n", '{"name": "nope", "arguments": {}}', "\n</tool_call>"]
    events = stream_chat(server, tools=TOOLS)
    assert tool_call_events(events) == []
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == "".join(pieces)
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_call_cut_short_by_max_tokens_ends_with_length(fake_server):
    pieces = ["<tool_call>\n", '{"name": "get_weather", ', '"arguments": {"city": ', '"Tok', 'yo"}}', "\n</tool_call>"]
    server = fake_server(reply=lambda p, params: pieces)
    events = stream_chat(server, tools=TOOLS, max_tokens=4)
    [call] = accumulate(events).values()
    assert call["name"] == "get_weather" and call["arguments"] == '{"city": "Tok'  # what was written, as OpenAI does
    assert all(not e["choices"][0]["delta"].get("content") for e in events)  # not repeated as text
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_tool_call_streamed(fake_server):
    server = fake_server(reply=calling)
    events = stream_chat(server, tools=TOOLS)
    deltas = [e["choices"][0]["delta"] for e in events]
    assert "".join(d.get("content") or "" for d in deltas) == "Sure.\n"
    [call] = accumulate(events).values()
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_forced_tool_choice_constrains_the_output_to_a_call(fake_server):
    server = fake_server(reply=lambda p, params: ['{"name": "get_weather", ', '"arguments": {"city": "Oslo"}}'])
    choice = {"type": "function", "function": {"name": "get_weather"}}
    body = httpx.post(server.url + CHAT, json={"model": "fake", "messages": USER, "tools": TOOLS, "tool_choice": choice}).json()
    schema = json.loads(server.engine.added[-1].params.structured_outputs.json)
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["arguments"] == TOOLS[0]["function"]["parameters"]
    message = body["choices"][0]["message"]
    # OpenAI (and vLLM) end a call forced by name with "stop", not "tool_calls".
    assert message["content"] is None and body["choices"][0]["finish_reason"] == "stop"
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    events = stream_chat(server, tools=TOOLS, tool_choice=choice)
    [call] = accumulate(events).values()
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Oslo"}
    assert len(tool_call_events(events)) >= 2  # named first, arguments after
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    # "required" lets the model pick the tool, and ends with "tool_calls" (as vLLM).
    required = httpx.post(server.url + CHAT, json={"model": "fake", "messages": USER, "tools": TOOLS, "tool_choice": "required"})
    assert server.engine.added[-1].params.structured_outputs is not None
    assert required.json()["choices"][0]["finish_reason"] == "tool_calls"
    events = stream_chat(server, tools=TOOLS, tool_choice="required")
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_choice_errors(fake_server):
    server = fake_server()
    bad = {"type": "function", "function": {"name": "nope"}}
    assert_openai_error(httpx.post(server.url + CHAT, json={"model": "fake", "messages": USER, "tools": TOOLS, "tool_choice": bad}),
                        400, param="tool_choice")
    twice = TOOLS + TOOLS
    assert_openai_error(httpx.post(server.url + CHAT, json={"model": "fake", "messages": USER, "tools": twice}), 400, param="tools")
    both = {"model": "fake", "messages": USER, "tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}
    assert_openai_error(httpx.post(server.url + CHAT, json=both), 400, param="tool_choice")
    assert server.engine.added == []


def test_tool_choice_none_hides_the_tools(fake_server):
    server = fake_server(reply=calling)
    body = httpx.post(server.url + CHAT, json={"model": "fake", "messages": USER, "tools": TOOLS, "tool_choice": "none"}).json()
    assert body["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in body["choices"][0]["message"]
    assert server.engine.rendered[-1][0][0]["role"] == "user"


def test_tool_history_is_written_as_text_for_templates_without_tools(fake_server):
    server = fake_server()
    history = USER + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert httpx.post(server.url + CHAT, json={"model": "fake", "messages": history, "tools": TOOLS}).status_code == 200
    messages, _ = server.engine.rendered[-1]
    assert messages[2] == {"role": "assistant",
                           "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'}
    assert messages[3] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
    broken = history[:1] + [{**history[1], "tool_calls": [{**history[1]["tool_calls"][0], "function": {"name": "x", "arguments": "{oops"}}]}]
    assert_openai_error(httpx.post(server.url + CHAT, json={"model": "fake", "messages": broken}), 400, contains="arguments")


def test_templates_that_render_tools_get_them_natively(fake_server):
    template = "{% if tools %}{{ tools }} <tool_call>{% endif %}"
    server = fake_server(reply=calling, chat_template=template)
    history = USER + [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "c", "content": "rain"}]
    httpx.post(server.url + CHAT, json={"model": "fake", "messages": history, "tools": TOOLS})
    messages, kwargs = server.engine.rendered[-1]
    assert kwargs["tools"] == TOOLS
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Rome"}  # a dict, as templates expect
    assert messages[2]["role"] == "tool"


def test_ollama_chat_tool_calls(fake_server):
    server = fake_server(reply=calling)
    body = httpx.post(server.url + "/api/chat", json={"model": "fake", "messages": USER, "tools": TOOLS, "stream": False}).json()
    assert body["message"]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert body["message"]["content"] == "Sure.\n"
    lines = [json.loads(line) for line in httpx.post(server.url + "/api/chat", json={
        "model": "fake", "messages": USER, "tools": TOOLS}).text.splitlines()]
    calls = [line["message"]["tool_calls"] for line in lines if "tool_calls" in line["message"]]
    assert calls == [[{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]]
    assert lines[-1]["done"] is True


def test_llama3_json_tool_calls(fake_server):
    template = "{% if tools %}Environment: ipython {{ tools }}{% endif %}<|python_tag|>"
    pieces = ['{"name": "get_weather", ', '"parameters": {"city": ', '"Lima"}}']
    server = fake_server(reply=lambda p, params: pieces, chat_template=template)
    body = httpx.post(server.url + CHAT, json={"model": "fake", "messages": USER, "tools": TOOLS}).json()
    assert server.engine.rendered[-1][1]["tools"] == TOOLS
    [call] = body["choices"][0]["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"city": "Lima"}
    events = stream_chat(server, tools=TOOLS)
    assert all(not e["choices"][0]["delta"].get("content") for e in events)  # the JSON is never shown as text
    [call] = accumulate(events).values()
    assert call["name"] == "get_weather" and call["arguments"] == '{"city": "Lima"}'
    assert tool_call_events(events)[0][0] < len(events) - 1  # opened before the end
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # a forced call in Llama's format names its arguments "parameters"
    httpx.post(server.url + CHAT, json={"model": "fake", "messages": USER, "tools": TOOLS, "tool_choice": "required"})
    assert "parameters" in json.loads(server.engine.added[-1].params.structured_outputs.json)["properties"]
