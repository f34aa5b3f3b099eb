"""Tool-call formats: parsing, streaming hold-back, forced-call schemas (no server)."""

from __future__ import annotations

import pytest

from localllm.server.tool_calls import (
    ToolCallStreamer,
    ToolFormat,
    ToolPlan,
    ToolSpec,
    detect_tool_format,
    parse_forced_call,
    parse_tool_calls,
)

WEATHER = ToolSpec("get_weather", "Weather in a city", {"type": "object", "properties": {"city": {"type": "string"}}})
TIME = ToolSpec("get_time", None, {"type": "object", "properties": {}})
NAMES = {"get_weather", "get_time"}


def plan(fmt=ToolFormat.HERMES, forced=None):
    return ToolPlan((WEATHER, TIME), fmt, False, forced)


def test_hermes_calls_and_the_content_before_them():
    text = ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": "{}"}\n</tool_call>')
    content, calls = parse_tool_calls(text, ToolFormat.HERMES, NAMES)
    assert content == "Let me look."
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert calls[0].id.startswith("call_") and calls[0].id != calls[1].id
    assert calls[0].arguments_json == '{"city": "Paris"}'


def test_hermes_call_cut_off_before_its_closing_tag_still_parses():
    _, calls = parse_tool_calls('<tool_call>\n{"name": "get_time", "arguments": {}}', ToolFormat.HERMES, NAMES)
    assert [c.name for c in calls] == ["get_time"]


@pytest.mark.parametrize(
    "text",
    [
        "Just an answer.",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>',  # broken JSON
        '<tool_call>\n{"name": "launch_missiles", "arguments": {}}\n</tool_call>',  # no such tool
        '<tool_call>\n{"name": "get_weather", "arguments": [1]}\n</tool_call>',  # arguments not an object
    ],
)
def test_text_that_is_not_a_valid_call_stays_content(text):
    assert parse_tool_calls(text, ToolFormat.HERMES, NAMES) == (text, [])


def test_llama3_json_calls():
    text = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}; {"name": "get_time", "parameters": {}}'
    content, calls = parse_tool_calls(text, ToolFormat.LLAMA3_JSON, NAMES)
    assert content == "" and [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Oslo"}), ("get_time", {})]
    assert parse_tool_calls("  {not json", ToolFormat.LLAMA3_JSON, NAMES) == ("  {not json", [])
    assert parse_tool_calls("The answer is 4.", ToolFormat.LLAMA3_JSON, NAMES)[1] == []


def test_format_detection_from_the_chat_template():
    assert detect_tool_format(None) == (ToolFormat.HERMES, False)
    assert detect_tool_format("{% for m in messages %}{{ m.content }}{% endfor %}") == (ToolFormat.HERMES, False)
    qwen = "{% if tools %}<tools>{% for t in tools %}{{ t }}{% endfor %}</tools> <tool_call>{% endif %}"
    assert detect_tool_format(qwen) == (ToolFormat.HERMES, True)
    llama = "{% if tools %}Environment: ipython{% endif %}<|python_tag|>"
    assert detect_tool_format(llama) == (ToolFormat.LLAMA3_JSON, True)


def feed_all(streamer, pieces):
    return "".join(streamer.feed(p) for p in pieces)


def test_streamer_holds_back_a_partial_marker_and_releases_it_if_it_is_not_one():
    s = ToolCallStreamer(plan())
    assert feed_all(s, ["Use <", "tool", "_"]) == "Use "
    assert s.feed("box> please") == "<tool_box> please"
    assert s.finish() == ("", [])


def test_streamer_shows_content_then_returns_the_calls_at_the_end():
    s = ToolCallStreamer(plan())
    pieces = ["Checking", ".\n<tool", "_call>\n", '{"name": "get_weather", ', '"arguments": {"city": "Rome"}}', "\n</tool_call>"]
    assert feed_all(s, pieces) == "Checking.\n"
    rest, calls = s.finish()
    assert rest == "" and [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Rome"})]


def test_streamer_gives_back_everything_when_no_call_parses():
    s = ToolCallStreamer(plan())
    assert feed_all(s, ["a ", "<tool_call>", " nonsense"]) == "a "
    assert s.finish() == ("<tool_call> nonsense", [])


def test_llama3_streamer_holds_a_leading_brace_and_streams_prose():
    s = ToolCallStreamer(plan(ToolFormat.LLAMA3_JSON))
    assert feed_all(s, ["  ", '{"name": "get_time", ', '"parameters": {}}']) == ""
    assert [c.name for c in s.finish()[1]] == ["get_time"]
    s = ToolCallStreamer(plan(ToolFormat.LLAMA3_JSON))
    assert feed_all(s, ["  ", "Hello", " there"]) == "  Hello there"
    assert s.finish() == ("", [])


def test_forced_schema_names_the_tool_in_the_models_format():
    named = plan(forced="get_weather").forced_schema()
    assert named["properties"]["name"] == {"const": "get_weather"}
    assert named["properties"]["arguments"] == WEATHER.parameters and named["required"] == ["name", "arguments"]
    anyof = plan(forced="").forced_schema()["anyOf"]
    assert [o["properties"]["name"]["const"] for o in anyof] == ["get_weather", "get_time"]
    assert "parameters" in plan(ToolFormat.LLAMA3_JSON, forced="get_time").forced_schema()["properties"]


def test_forced_output_parses_or_is_none_when_cut_short():
    assert parse_forced_call('{"name": "get_weather", "arguments": {"city": "Lima"}}', NAMES).arguments == {"city": "Lima"}
    assert parse_forced_call('{"name": "get_weather", "argu', NAMES) is None
    s = ToolCallStreamer(plan(forced="get_weather"))
    assert s.feed('{"name": "get_weather", "arguments": {}}') == ""
    assert [c.name for c in s.finish()[1]] == ["get_weather"]
