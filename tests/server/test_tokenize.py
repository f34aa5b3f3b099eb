"""vLLM's /tokenize and /detokenize: both body forms, the chat route's own count, errors in
OpenAI's shape; and on the real SmolLM2 server, the count the chat route charges."""

from __future__ import annotations

import httpx
import pytest

from tests.server.sse import assert_openai_error

USER = [{"role": "user", "content": "Say hello"}]


def post(server, path: str, **body) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30)


def test_tokenize_a_prompt(fake_server):
    server = fake_server(max_model_len=300)
    body = post(server, "/tokenize", model="fake", prompt="one two three").json()
    assert set(body) == {"count", "max_model_len", "tokens", "token_strs"}
    assert body["count"] == 3 and len(body["tokens"]) == 3
    assert body["max_model_len"] == 300 and body["token_strs"] is None
    assert body["tokens"] == server.llm.tokenize("one two three")
    strs = post(server, "/tokenize", prompt="one two", return_token_strs=True).json()["token_strs"]
    assert strs == ["one", "two"]  # the model may be left out, as vLLM allows


def test_tokenize_messages_counts_what_the_chat_route_charges(fake_server):
    server = fake_server()
    messages = [{"role": "system", "content": "Be brief"}, *USER]
    tokenized = post(server, "/tokenize", model="fake", messages=messages, add_generation_prompt=True).json()
    chat = post(server, "/v1/chat/completions", model="fake", messages=messages).json()
    assert tokenized["count"] == chat["usage"]["prompt_tokens"]
    assert tokenized["tokens"] == server.engine.added[-1].prompt_token_ids
    # the same path the chat route takes: the same messages reached the same template
    assert server.engine.rendered[0] == server.engine.rendered[1]


def test_tokenize_can_continue_the_final_message(fake_server):
    server = fake_server()
    messages = [*USER, {"role": "assistant", "content": "Hello"}]
    assert post(server, "/tokenize", model="fake", messages=messages, continue_final_message=True).status_code == 200
    assert server.engine.rendered[-1][1] == {"continue_final_message": True}
    assert post(server, "/tokenize", model="fake", messages=messages).status_code == 200
    assert server.engine.rendered[-1][1] == {}  # not asked: the template never sees the key


def test_tokenize_messages_with_tools_renders_them_as_the_chat_route_does(fake_server):
    server = fake_server()
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    tokenized = post(server, "/tokenize", model="fake", messages=USER, tools=tools).json()
    chat = post(server, "/v1/chat/completions", model="fake", messages=USER, tools=tools).json()
    assert tokenized["count"] == chat["usage"]["prompt_tokens"] > 5
    assert server.engine.rendered[0] == server.engine.rendered[1]


def test_detokenize_inverts_tokenize(fake_server):
    server = fake_server()
    tokens = post(server, "/tokenize", model="fake", prompt="hello there world").json()["tokens"]
    assert post(server, "/detokenize", model="fake", tokens=tokens).json() == {"prompt": "hello there world"}


@pytest.mark.parametrize("body, contains", [
    ({"model": "fake"}, "either `prompt`"),
    ({"model": "fake", "prompt": "a", "messages": USER}, "either `prompt`"),
    ({"model": "fake", "prompt": "a", "add_generation_prompt": True}, "only apply to `messages`"),
    ({"model": "fake", "messages": USER, "add_generation_prompt": True, "continue_final_message": True},
     "cannot both be true"),
    ({"model": "fake", "messages": []}, "must not be empty"),
    ({"model": "fake", "messages": USER, "chat_template_kwargs": {"add_generation_prompt": False}}, "may not set"),
    ({"model": "fake", "prompt": "a", "chat_template": "{{ x }}"}, "Unrecognized request argument"),
])
def test_tokenize_bad_bodies_are_400s(fake_server, body, contains):
    server = fake_server()
    assert_openai_error(httpx.post(server.url + "/tokenize", json=body), 400, contains=contains)


def test_tokenize_without_a_chat_template_takes_a_prompt_only(fake_server):
    server = fake_server(chat_template=None)
    assert_openai_error(post(server, "/tokenize", model="fake", messages=USER), 400, contains="no chat template")
    assert post(server, "/tokenize", model="fake", prompt="a b").json()["count"] == 2


def test_a_wrong_model_is_the_chat_routes_404(fake_server):
    server = fake_server()
    # NOTE: the same answer as /v1/chat/completions and vLLM's /tokenize give for another model
    assert_openai_error(post(server, "/tokenize", model="other", prompt="a"), 404, code="model_not_found")
    assert_openai_error(post(server, "/detokenize", model="other", tokens=[1]), 404, code="model_not_found")


@pytest.mark.parametrize("tokens", [[1, 1000], [-1], [5, 10**9]])
def test_detokenize_refuses_ids_outside_the_vocab(fake_server, tokens):
    server = fake_server()  # the fake model's vocabulary has 1000 ids
    assert_openai_error(post(server, "/detokenize", model="fake", tokens=tokens), 400, param="tokens",
                        contains="not a token id")
    assert_openai_error(post(server, "/detokenize", model="fake", tokens=["a"]), 400, param="tokens[0]")


def test_tokenize_needs_the_api_key_like_the_rest(fake_server):
    server = fake_server(settings={"api_key": "k"})
    assert_openai_error(post(server, "/tokenize", prompt="a"), 401, code="invalid_api_key")
    response = httpx.post(server.url + "/tokenize", json={"prompt": "a"}, headers={"Authorization": "Bearer k"})
    assert response.json()["count"] == 1


# ---------------------------------------------------------------- the real model


def test_real_model_count_is_the_chat_routes_prompt_tokens(real_server):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Name three colours, with an émoji 🎨."}]
    tokenized = post(real_server, "/tokenize", model="smollm2", messages=messages, add_generation_prompt=True).json()
    chat = post(real_server, "/v1/chat/completions", model="smollm2", messages=messages, max_tokens=1).json()
    assert tokenized["count"] == chat["usage"]["prompt_tokens"] == len(tokenized["tokens"])
    assert tokenized["max_model_len"] == 2048
    text = post(real_server, "/detokenize", model="smollm2", tokens=tokenized["tokens"]).json()["prompt"]
    assert "Name three colours, with an émoji 🎨." in text and text.rstrip().endswith("assistant")
    # without the generation prompt the assistant's header is not there: fewer tokens
    bare = post(real_server, "/tokenize", model="smollm2", messages=messages, add_generation_prompt=False).json()
    assert bare["count"] < tokenized["count"]
    plain = post(real_server, "/tokenize", model="smollm2", prompt="Hello world", return_token_strs=True).json()
    assert plain["count"] == len(plain["token_strs"]) >= 2
    real_server.wait_idle()
