"""The OpenAI API over a scripted engine: response shapes, parameters, errors, streaming."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.server.sse import assert_openai_error, sse_events

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "Say hello"}]


def chat(server, **body):
    return httpx.post(server.url + CHAT, json={"model": "fake", "messages": USER, **body}, timeout=30)


def test_models_list_the_model_with_its_context_length(fake_server):
    server = fake_server(max_model_len=300)
    body = httpx.get(server.url + "/v1/models").json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == "fake" and card["object"] == "model" and card["max_model_len"] == 300
    assert httpx.get(server.url + "/v1/models/fake").json()["id"] == "fake"
    assert_openai_error(httpx.get(server.url + "/v1/models/other"), 404, code="model_not_found")


def test_chat_completion_shape_and_usage(fake_server):
    server = fake_server()
    body = chat(server).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    [choice] = body["choices"]
    assert choice == {"index": 0, "message": {"role": "assistant", "content": "Hello from the fake engine."},
                      "logprobs": None, "finish_reason": "stop"}
    prompt_tokens = len(server.engine.added[-1].prompt_token_ids)
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert body["usage"]["completion_tokens"] == 6
    assert body["usage"]["total_tokens"] == prompt_tokens + 6


def test_chat_stream_is_well_formed_sse_with_usage(fake_server):
    server = fake_server()
    with httpx.stream("POST", server.url + CHAT, json={"model": "fake", "messages": USER, "stream": True,
                                                      "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello from the fake engine."
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


def test_stream_without_usage_has_no_usage_field(fake_server):
    server = fake_server()
    with httpx.stream("POST", server.url + CHAT, json={"model": "fake", "messages": USER, "stream": True}) as response:
        events = sse_events(response.read().decode())
    assert all("usage" not in e for e in events[:-1]) and all(e["choices"] for e in events[:-1])


def test_sampling_fields_reach_the_engine(fake_server):
    server = fake_server()
    response = chat(server, temperature=0.3, top_p=0.5, seed=7, stop=["x", "y"], presence_penalty=0.5,
                    frequency_penalty=-0.5, max_completion_tokens=9, n=2, top_k=5, min_p=0.1,
                    repetition_penalty=1.2, logprobs=True, top_logprobs=3, user="ignored")
    assert response.status_code == 200, response.text
    p = server.engine.added[-1].params
    assert (p.temperature, p.top_p, p.seed, p.stop, p.max_tokens, p.n) == (0.3, 0.5, 7, ["x", "y"], 9, 2)
    assert (p.presence_penalty, p.frequency_penalty, p.top_k, p.min_p, p.repetition_penalty) == (0.5, -0.5, 5, 0.1, 1.2)
    assert p.logprobs == 3
    choices = response.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    lp = choices[0]["logprobs"]["content"][0]
    assert set(lp) == {"token", "logprob", "bytes", "top_logprobs"} and lp["token"] == "Hello"


def test_max_tokens_defaults_to_the_rest_of_the_context(fake_server):
    server = fake_server(max_model_len=100)
    chat(server)
    added = server.engine.added[-1]
    assert added.params.max_tokens == 100 - len(added.prompt_token_ids)
    assert added.params.temperature == 1.0  # OpenAI's default


def test_stop_ends_the_choice(fake_server):
    server = fake_server()
    body = chat(server, stop=["fake"]).json()
    assert body["choices"][0]["message"]["content"] == "Hello from the"
    assert body["choices"][0]["finish_reason"] == "stop"


def test_n2_streams_both_choices(fake_server):
    server = fake_server()
    with httpx.stream("POST", server.url + CHAT, json={"model": "fake", "messages": USER, "stream": True, "n": 2}) as r:
        events = sse_events(r.read().decode())[:-1]
    for index in (0, 1):
        mine = [e["choices"][0] for e in events if e["choices"][0]["index"] == index]
        assert "".join(c["delta"].get("content", "") for c in mine) == "Hello from the fake engine."
        assert [c["finish_reason"] for c in mine if c["finish_reason"]] == ["stop"]


@pytest.mark.parametrize(
    "raw, status, param, code, contains",
    [
        (b"{not json", 400, None, None, "could not parse the JSON body"),
        (b"[1, 2]", 400, None, None, "JSON object"),
        (b"", 400, None, None, ""),
        (json.dumps({"model": "fake"}).encode(), 400, "messages", None, "messages"),
        (json.dumps({"model": "fake", "messages": USER, "foo": 1}).encode(), 400, "foo", None, "Unrecognized"),
        (json.dumps({"model": "fake", "messages": USER, "temperature": 3}).encode(), 400, "temperature", None, "2"),
        (json.dumps({"model": "fake", "messages": USER, "n": 0}).encode(), 400, "n", None, ""),
        (json.dumps({"model": "fake", "messages": USER, "logprobs": True, "top_logprobs": 25}).encode(), 400, "top_logprobs", None, ""),
        (json.dumps({"model": "fake", "messages": USER, "max_tokens": 0}).encode(), 400, "max_tokens", None, ""),
        (json.dumps({"model": "fake", "messages": USER, "stop": [""]}).encode(), 400, "stop", None, ""),
        (json.dumps({"model": "fake", "messages": USER, "logit_bias": {"1": 5}}).encode(), 400, "logit_bias", None, "not supported"),
        (json.dumps({"model": "fake", "messages": USER, "stream_options": {"include_usage": True}}).encode(), 400, None, None, "stream"),
        (json.dumps({"model": "fake", "messages": USER, "tool_choice": "required"}).encode(), 400, None, None, "tools"),
        (json.dumps({"model": "fake", "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, None, None, "role"),
        (json.dumps({"model": "fake", "messages": []}).encode(), 400, "messages", None, "empty"),
        (json.dumps({"model": "fake", "messages": [{"role": "user"}]}).encode(), 400, "messages[0].content", None, "required"),
        (json.dumps({"model": "fake", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:,"}}]}]}).encode(), 400, "messages[0].content", None, "text only"),
        (json.dumps({"model": "nope", "messages": USER}).encode(), 404, "model", "model_not_found", "nope"),
        (json.dumps({"messages": USER}).encode(), 400, "model", None, "model"),
    ],
)
def test_bad_requests_get_openai_errors(fake_server, raw, status, param, code, contains):
    server = fake_server()
    response = httpx.post(server.url + CHAT, content=raw, headers={"content-type": "application/json"})
    assert_openai_error(response, status, param=param, code=code, contains=contains)
    assert server.engine.added == []  # nothing reached the engine


def test_prompt_plus_max_tokens_past_the_context_names_the_numbers(fake_server):
    server = fake_server(max_model_len=64)
    num_prompt = len("<user> Say hello <assistant>".split())
    error = assert_openai_error(chat(server, max_tokens=100), 400, code="context_length_exceeded")
    assert f"{num_prompt + 100} tokens ({num_prompt} in the prompt, 100 in the completion)" in error["message"]
    assert "64" in error["message"]
    long_prompt = [{"role": "user", "content": "word " * 80}]
    error = assert_openai_error(chat(server, messages=long_prompt), 400, code="context_length_exceeded")
    assert "64" in error["message"] and "no room" in error["message"]
    assert server.engine.added == []


def test_unknown_route_and_method_are_openai_errors(fake_server):
    server = fake_server()
    assert_openai_error(httpx.get(server.url + "/v1/nothing"), 404, contains="/v1/nothing")
    assert_openai_error(httpx.get(server.url + CHAT), 405)


def test_response_format_json_schema_reaches_the_engine(fake_server):
    server = fake_server(reply=lambda prompt, params: ['{"a":', " 1}"])
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    body = chat(server, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}).json()
    assert json.loads(body["choices"][0]["message"]["content"]) == {"a": 1}
    constraint = server.engine.added[-1].params.structured_outputs
    assert json.loads(constraint.json) == schema
    chat(server, response_format={"type": "json_object"})
    assert server.engine.added[-1].params.structured_outputs.json_object
    chat(server, response_format={"type": "text"})
    assert server.engine.added[-1].params.structured_outputs is None


def test_bad_json_schema_is_a_400(fake_server):
    server = fake_server()
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}
    assert_openai_error(chat(server, response_format=bad), 400, param="response_format", contains="frobnicate")
    assert_openai_error(chat(server, response_format={"type": "json_schema"}), 400, contains="json_schema")


def test_engine_failure_is_an_error_and_the_server_stays_up(fake_server):
    server = fake_server()
    server.engine.fail_next_step = RuntimeError("scripted failure")
    with httpx.stream("POST", server.url + CHAT, json={"model": "fake", "messages": USER, "stream": True}) as r:
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    assert "scripted failure" in events[-2]["error"]["message"]
    # The engine thread is gone now: requests get a 503 in the API's shape, the rest still answers.
    assert_openai_error(chat(server), 503, contains="engine")
    health = httpx.get(server.url + "/health")
    assert health.status_code == 503 and "scripted failure" in health.json()["error"]
    assert not server.llm.is_running and str(server.llm.error) == "scripted failure"
    assert httpx.get(server.url + "/v1/models").status_code == 200
    server.engine.requests.clear()
