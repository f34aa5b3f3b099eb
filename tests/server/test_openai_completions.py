"""/v1/completions over a scripted engine: prompt forms, batches, echo + logprobs, FIM."""

from __future__ import annotations

import httpx

from tests.server.sse import assert_openai_error, sse_events

URL = "/v1/completions"


def complete(server, **body):
    return httpx.post(server.url + URL, json={"model": "fake", **body}, timeout=30)


def test_text_prompt_and_default_max_tokens(fake_server):
    server = fake_server()
    body = complete(server, prompt="Once upon a time").json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"] == [{"index": 0, "text": "Hello from the fake engine.", "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"]["prompt_tokens"] == 4 and body["usage"]["completion_tokens"] == 6
    added = server.engine.added[-1]
    assert added.prompt == "Once upon a time" and added.params.max_tokens == 16  # OpenAI's default


def test_batch_of_prompts_times_n_choices(fake_server):
    server = fake_server()
    body = complete(server, prompt=["a b", "c d e"], n=2, max_tokens=3).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert all(c["text"] == "Hello from the" and c["finish_reason"] == "length" for c in body["choices"])
    assert body["usage"]["prompt_tokens"] == 5 and body["usage"]["completion_tokens"] == 12
    assert sorted(len(r.prompt_token_ids) for r in server.engine.added) == [2, 3]


def test_token_id_prompts(fake_server):
    server = fake_server()
    assert complete(server, prompt=[5, 6, 7]).status_code == 200
    assert server.engine.added[-1].prompt_token_ids == [5, 6, 7]
    assert complete(server, prompt=[[1, 2], [3]]).status_code == 200
    assert_openai_error(complete(server, prompt=[1, 99999]), 400, param="prompt", contains="[0, 1000)")


def test_echo_with_logprobs_scores_the_prompt(fake_server):
    server = fake_server()
    body = complete(server, prompt="the cat sat", echo=True, logprobs=1, max_tokens=0).json()
    [choice] = body["choices"]
    assert choice["text"] == "the cat sat" and choice["finish_reason"] == "length"
    lp = choice["logprobs"]
    assert lp["tokens"] == ["the", "cat", "sat"]
    assert lp["token_logprobs"] == [None, -1.0, -1.0]
    assert lp["top_logprobs"] == [None, {"cat": -1.0}, {"sat": -1.0}]
    assert lp["text_offset"] == [0, 3, 6]
    assert body["usage"]["completion_tokens"] == 0
    assert server.engine.added[-1].params.prompt_logprobs == 1


def test_echo_streamed_with_generated_logprobs(fake_server):
    server = fake_server()
    with httpx.stream("POST", server.url + URL, json={"model": "fake", "prompt": "x y", "echo": True, "logprobs": 0,
                                                     "max_tokens": 2, "stream": True}) as r:
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    chunks = [e["choices"][0] for e in events[:-1]]
    assert "".join(c["text"] for c in chunks) == "x yHello from"
    tokens = [t for c in chunks for t in c["logprobs"]["tokens"]]
    assert tokens == ["x", "y", "Hello", " from"]
    offsets = [o for c in chunks for o in c["logprobs"]["text_offset"]]
    assert offsets == [0, 1, 2, 7]
    assert chunks[-1]["finish_reason"] == "length"


def test_suffix_builds_a_fim_prompt_when_the_model_has_fim_tokens(fake_server):
    server = fake_server(fim=True)
    assert complete(server, prompt="def add(a, b):", suffix="    return c").status_code == 200
    assert server.engine.added[-1].prompt == "<|fim_prefix|>def add(a, b):<|fim_suffix|>    return c<|fim_middle|>"


def test_suffix_without_fim_tokens_is_a_400(fake_server):
    server = fake_server()
    assert_openai_error(complete(server, prompt="x", suffix="y"), 400, param="suffix", contains="FIM")


def test_completion_errors(fake_server):
    server = fake_server(max_model_len=32)
    assert_openai_error(complete(server, prompt=""), 400, param="prompt", contains="empty")
    assert_openai_error(complete(server, prompt=[]), 400, param="prompt", contains="empty")
    assert_openai_error(complete(server, prompt="x", max_tokens=0), 400, contains="echo")
    assert_openai_error(complete(server, prompt="x", best_of=3), 400, contains="best_of")
    assert_openai_error(complete(server, prompt="x", logprobs=21), 400, param="logprobs")
    error = assert_openai_error(complete(server, prompt="w " * 20, max_tokens=20), 400, code="context_length_exceeded")
    assert "40 tokens (20 in the prompt, 20 in the completion)" in error["message"]
    assert server.engine.added == []


def test_streamed_batch_and_usage(fake_server):
    server = fake_server()
    body = {"model": "fake", "prompt": ["a", "b"], "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + URL, json=body) as r:
        events = sse_events(r.read().decode())
    usage = events[-2]["usage"]
    assert usage == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6, "prompt_tokens_details": {"cached_tokens": 0}}
    by_index = {}
    for e in events[:-2]:
        c = e["choices"][0]
        by_index[c["index"]] = by_index.get(c["index"], "") + c["text"]
    assert by_index == {0: "Hello from", 1: "Hello from"}
