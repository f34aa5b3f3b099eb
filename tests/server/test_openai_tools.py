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


def test_tool_call_streamed(fake_server):
    server = fake_server(reply=calling)
    with httpx.stream("POST", server.url + CHAT, json={"model": "fake", "messages": USER, "tools": TOOLS, "stream": True}) as r:
        events = sse_events(r.read().decode())[:-1]
    deltas = [e["choices"][0]["delta"] for e in events]
    assert "".join(d.get("content") or "" for d in deltas) == "Sure.\n"
    [calls] = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert calls[0]["index"] == 0 and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_forced_tool_choice_constrains_the_output_to_a_call(fake_server):
    server = fake_server(reply=lambda p, params: ['{"name": "get_weather", ', '"arguments": {"city": "Oslo"}}'])
    choice = {"type": "function", "function": {"name": "get_weather"}}
    body = httpx.post(server.url + CHAT, json={"model": "fake", "messages": USER, "tools": TOOLS, "tool_choice": choice}).json()
    schema = json.loads(server.engine.added[-1].params.structured_outputs.json)
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["arguments"] == TOOLS[0]["function"]["parameters"]
    message = body["choices"][0]["message"]
    assert message["content"] is None and body["choices"][0]["finish_reason"] == "tool_calls"
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    httpx.post(server.url + CHAT, json={"model": "fake", "messages": USER, "tools": TOOLS, "tool_choice": "required"})
    assert server.engine.added[-1].params.structured_outputs is not None


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
    pieces = ['{"name": "get_weather", ', '"parameters": {"city": "Lima"}}']
    server = fake_server(reply=lambda p, params: pieces, chat_template=template)
    body = httpx.post(server.url + CHAT, json={"model": "fake", "messages": USER, "tools": TOOLS}).json()
    assert server.engine.rendered[-1][1]["tools"] == TOOLS
    [call] = body["choices"][0]["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"city": "Lima"}
    with httpx.stream("POST", server.url + CHAT, json={"model": "fake", "messages": USER, "tools": TOOLS, "stream": True}) as r:
        events = sse_events(r.read().decode())[:-1]
    assert all(not e["choices"][0]["delta"].get("content") for e in events)  # the JSON is never shown as text
    assert events[-1]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "get_weather"
    # a forced call in Llama's format names its arguments "parameters"
    httpx.post(server.url + CHAT, json={"model": "fake", "messages": USER, "tools": TOOLS, "tool_choice": "required"})
    assert "parameters" in json.loads(server.engine.added[-1].params.structured_outputs.json)["properties"]
