"""Tool-call formats: parsing, streaming hold-back and argument deltas, forced-call schemas (no server)."""

from __future__ import annotations

import json
import random

import pytest

from localllm.server.tool_call_deltas import ToolCallDeltas, scan_call
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


# ---------------------------------------------------------------- incremental (OpenAI) streaming

SEARCH = ToolSpec("search", None, {"type": "object"})


def _replay(plan: ToolPlan, text: str, cuts: list[int]) -> tuple[str, dict[int, dict], bool]:
    """Feed `text` cut at `cuts` through ToolCallDeltas; (content, calls by index, parsed)."""
    deltas = ToolCallDeltas(ToolCallStreamer(plan))
    content, events = "", []
    for a, b in zip([0, *cuts], [*cuts, len(text)]):
        shown, new = deltas.feed(text[a:b])
        content += shown
        events += new
    rest, last, parsed = deltas.finish()
    calls: dict[int, dict] = {}
    for d in events + last:
        call = calls.setdefault(d["index"], {"id": None, "name": None, "arguments": ""})
        if "id" in d:
            assert call["id"] is None, "a call is opened once"
            call["id"], call["name"] = d["id"], d["function"]["name"]
        call["arguments"] += d["function"]["arguments"]
    return content + rest, calls, parsed


@pytest.mark.parametrize("fmt, text", [
    (ToolFormat.HERMES, 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2], '
                        '"q": "a \\"}\\" {b}"}}\n</tool_call>\n<tool_call>\n{"name": "search", "arguments": {}}\n</tool_call>'),
    (ToolFormat.HERMES, '<tool_call>{"name":"search","arguments":{"nested":{"x":[{"y":null}],"z":true},"n":-1.5e3}}</tool_call>'),
    (ToolFormat.HERMES, '<tool_call>\n{"id": 3, "arguments": {"city": "Rome"}, "name": "get_weather"}\n</tool_call>'),
    (ToolFormat.LLAMA3_JSON, '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Lima"}}; '
                             '{"name": "search", "parameters": {"query": "}{"}}'),
])
def test_streamed_arguments_join_into_the_parsed_call_however_the_text_is_cut(fmt, text):
    plan = ToolPlan((WEATHER, SEARCH), fmt, False)
    expected_content, expected_calls = parse_tool_calls(text, fmt, plan.names)
    assert expected_calls  # the fixture is a valid answer
    rng = random.Random(7)
    for trial in range(60):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, min(len(text) - 1, 30)))) if trial else []
        content, calls, parsed = _replay(plan, text, cuts)
        assert parsed and content.strip() == expected_content
        assert [c["name"] for c in calls.values()] == [c.name for c in expected_calls]
        assert [json.loads(c["arguments"]) for c in calls.values()] == [c.arguments for c in expected_calls]
        assert len({c["id"] for c in calls.values()}) == len(calls)


def test_a_call_is_opened_as_soon_as_its_name_and_arguments_begin():
    plan = ToolPlan((WEATHER,), ToolFormat.HERMES, False)
    deltas = ToolCallDeltas(ToolCallStreamer(plan))
    assert deltas.feed('<tool_call>\n{"name": "get_wea') == ("", [])  # the name is not complete yet
    assert deltas.feed('ther", ') == ("", [])  # known, but its arguments have not begun
    _, [opened, first] = deltas.feed('"arguments": {"ci')
    assert opened["function"] == {"name": "get_weather", "arguments": ""} and opened["index"] == 0
    assert first == {"index": 0, "function": {"arguments": '{"ci'}}
    assert deltas.feed('ty": "Oslo"}') == ("", [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}])
    assert deltas.feed("}\n</tool_call>") == ("", [])  # the outer brace and the tag are not arguments
    assert deltas.finish() == ("", [], True)


@pytest.mark.parametrize("text, arguments", [
    ('<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}\n</tool_call>', {"city": "Rome"}),
    ('<tool_call>\n{"name": "get_time"}\n</tool_call>', {}),  # no arguments at all
])
def test_calls_it_cannot_follow_come_whole_at_the_end(text, arguments):
    plan = ToolPlan((WEATHER, TIME), ToolFormat.HERMES, False)
    deltas = ToolCallDeltas(ToolCallStreamer(plan))
    assert deltas.feed(text) == ("", [])
    rest, [call], parsed = deltas.finish()
    assert parsed and rest == "" and call["index"] == 0 and call["id"].startswith("call_")
    assert json.loads(call["function"]["arguments"]) == arguments


def test_arguments_written_before_the_name_go_out_when_the_name_arrives():
    plan = ToolPlan((WEATHER,), ToolFormat.HERMES, False)
    deltas = ToolCallDeltas(ToolCallStreamer(plan))
    assert deltas.feed('<tool_call>\n{"arguments": {"city": "Rome"}, ') == ("", [])
    _, [opened, arguments] = deltas.feed('"name": "get_weather"}\n</tool_call>')
    assert opened["function"]["name"] == "get_weather" and arguments["function"]["arguments"] == '{"city": "Rome"}'


def test_forced_calls_stream_their_arguments_too():
    plan = ToolPlan((WEATHER, SEARCH), ToolFormat.HERMES, False, forced="search")
    content, calls, parsed = _replay(plan, '{"name": "search", "arguments": {"query": "x"}}', [10, 20, 30, 40])
    assert content == "" and parsed and calls[0]["name"] == "search" and json.loads(calls[0]["arguments"]) == {"query": "x"}


def test_scan_call_reports_broken_json():
    assert scan_call('{"name": "a" "arguments": {}}', 0).broken
    assert scan_call('{"name": "a", "arguments": {}}}', 0).end == 30
    assert scan_call('{"name": "a", ', 0).name == "a" and scan_call('{"name": "a", ', 0).end is None


def test_a_long_call_is_scanned_once_however_many_pieces_it_comes_in(monkeypatch):
    from localllm.server import tool_call_deltas

    steps = []
    step = tool_call_deltas.CallScanner._step
    monkeypatch.setattr(tool_call_deltas.CallScanner, "_step", lambda self, text, i: steps.append(i) or step(self, text, i))
    content = "x = 1\\n" * 2000  # a file written by a write_file call, 12k characters
    text = '<tool_call>\n{"name": "search", "arguments": {"query": ' + json.dumps(content) + "}}\n</tool_call>"
    plan = ToolPlan((SEARCH,), ToolFormat.HERMES, False)
    _, calls, parsed = _replay(plan, text, list(range(7, len(text), 7)))
    assert parsed and json.loads(calls[0]["arguments"]) == {"query": content}
    assert len(steps) == len(set(steps)) < len(text)  # every character once, not once per piece
