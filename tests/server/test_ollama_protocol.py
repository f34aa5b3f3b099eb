"""The Ollama API over a scripted engine: NDJSON streaming, final stats, options, errors."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.server.sse import assert_ollama_error, ndjson_lines

USER = [{"role": "user", "content": "Say hello"}]
STATS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration")


def post(server, path, **body):
    return httpx.post(server.url + path, json={"model": "fake", **body}, timeout=30)


def test_chat_streams_ndjson_then_final_stats_in_nanoseconds(fake_server):
    server = fake_server()
    response = post(server, "/api/chat", messages=USER)  # Ollama streams by default
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = ndjson_lines(response.text)
    *pieces, final = lines
    assert all(p["done"] is False and p["model"] == "fake" and p["created_at"].endswith("Z") for p in pieces)
    assert "".join(p["message"]["content"] for p in pieces) == "Hello from the fake engine."
    assert all(p["message"]["role"] == "assistant" for p in lines)
    assert final["done"] is True and final["done_reason"] == "stop" and final["message"]["content"] == ""
    assert all(isinstance(final[k], int) for k in STATS)
    assert final["eval_count"] == 6
    assert final["prompt_eval_count"] == len(server.engine.added[-1].prompt_token_ids)
    assert final["total_duration"] >= final["prompt_eval_duration"] + final["eval_duration"] > 0


def test_load_duration_is_the_models_load_on_the_first_answer_then_the_wait_before_generation(fake_server):
    server = fake_server(model={"load_seconds": 2.5})
    assert post(server, "/api/chat").json()["done_reason"] == "load"  # a load request reports nothing
    first = ndjson_lines(post(server, "/api/chat", messages=USER).text)[-1]
    assert 2.5e9 <= first["load_duration"] < 3.5e9  # the load this server did before listening
    parts = first["load_duration"] + first["prompt_eval_duration"] + first["eval_duration"]
    assert first["total_duration"] >= parts  # Ollama's total includes the load
    for stream in (False, True):
        body = post(server, "/api/generate", prompt="again", stream=stream)
        later = body.json() if not stream else ndjson_lines(body.text)[-1]
        assert 0 < later["load_duration"] < 1e9  # reading and tokenizing the request, no load
        assert later["total_duration"] >= later["load_duration"] + later["prompt_eval_duration"] + later["eval_duration"]


def test_chat_without_streaming_is_one_object(fake_server):
    server = fake_server()
    body = post(server, "/api/chat", messages=USER, stream=False).json()
    assert body["message"] == {"role": "assistant", "content": "Hello from the fake engine."}
    assert body["done"] is True and body["eval_count"] == 6 and all(k in body for k in STATS)


def test_generate_streams_and_returns_context_to_continue_with(fake_server):
    server = fake_server()
    lines = ndjson_lines(post(server, "/api/generate", prompt="Say hello").text)
    assert "".join(line.get("response", "") for line in lines) == "Hello from the fake engine."
    final = lines[-1]
    first = server.engine.added[-1]
    assert final["context"] == first.prompt_token_ids + [t for t in final["context"][len(first.prompt_token_ids):]]
    assert len(final["context"]) == len(first.prompt_token_ids) + 6
    body = post(server, "/api/generate", prompt="again", context=final["context"], stream=False).json()
    assert server.engine.added[-1].prompt_token_ids[: len(final["context"])] == final["context"]
    assert body["response"] == "Hello from the fake engine."


def test_generate_raw_uses_the_prompt_as_is(fake_server):
    server = fake_server()
    body = post(server, "/api/generate", prompt="just these words", raw=True, stream=False).json()
    assert server.engine.added[-1].prompt == "just these words"
    assert "context" not in body
    post(server, "/api/generate", prompt="templated", system="be nice", stream=False)
    assert server.engine.added[-1].prompt == "<system> be nice <user> templated <assistant>"


def test_options_reach_the_engine_and_defaults_are_ollamas(fake_server):
    server = fake_server()
    post(server, "/api/chat", messages=USER, stream=False)
    p = server.engine.added[-1].params
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty) == (0.8, 0.9, 40, 1.0)
    options = {"num_predict": 5, "temperature": 0, "top_k": 3, "top_p": 0.5, "min_p": 0.05, "seed": 11,
               "stop": ["x"], "repeat_penalty": 1.3, "presence_penalty": 0.2, "frequency_penalty": 0.1,
               "num_ctx": 128, "num_thread": 4, "num_gpu": 99, "repeat_last_n": 64, "typical_p": 1.0}
    response = post(server, "/api/chat", messages=USER, stream=False, options=options)
    assert response.status_code == 200, response.text
    p = server.engine.added[-1].params
    assert (p.max_tokens, p.temperature, p.top_k, p.top_p, p.min_p, p.seed, p.stop) == (5, 0, 3, 0.5, 0.05, 11, ["x"])
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (1.3, 0.2, 0.1)


def test_num_ctx_bounds_the_prompt_and_caps_num_predict(fake_server):
    server = fake_server(max_model_len=256)
    # As Ollama: num_predict past the context's room is a cap, not an error (Continue sends 4096
    # with num_ctx set to the model's context); generation ends at the context's end.
    response = post(server, "/api/generate", prompt="a b c", raw=True, stream=False, options={"num_ctx": 20, "num_predict": 30})
    assert response.status_code == 200, response.text
    assert server.engine.added[-1].params.max_tokens == 17
    post(server, "/api/generate", prompt="a b c", raw=True, stream=False, options={"num_ctx": 20, "num_predict": 5})
    assert server.engine.added[-1].params.max_tokens == 5
    # A prompt that does not fit is a 400 with the numbers, never cut.
    error = assert_ollama_error(post(server, "/api/generate", prompt="a b c d e", raw=True, options={"num_ctx": 5}), 400)
    assert "maximum context length is 5 tokens" in error and "the prompt has 5 tokens" in error
    post(server, "/api/generate", prompt="a b c", raw=True, stream=False, options={"num_ctx": 20})
    assert server.engine.added[-1].params.max_tokens == 17  # the rest of num_ctx
    post(server, "/api/generate", prompt="a b c", raw=True, stream=False, options={"num_ctx": 100000})
    assert server.engine.added[-1].params.max_tokens == 253  # num_ctx past the server's context is capped


def test_load_requests_and_num_predict_zero_run_nothing(fake_server):
    server = fake_server()
    body = post(server, "/api/chat").json()
    assert body["done"] is True and body["done_reason"] == "load" and body["message"]["content"] == ""
    body = post(server, "/api/generate").json()
    assert body["done"] is True and body["done_reason"] == "load" and body["response"] == ""
    body = post(server, "/api/generate", prompt="hi", options={"num_predict": 0}).json()
    assert body["done_reason"] == "length" and body["eval_count"] == 0 and body["response"] == ""
    assert server.engine.added == []


@pytest.mark.parametrize(
    "path, body, status, contains",
    [
        ("/api/chat", {"messages": []}, 400, "empty"),
        ("/api/chat", {"messages": USER, "options": {"foo": 1}}, 400, "foo"),
        ("/api/chat", {"messages": USER, "options": {"temperature": -1}}, 400, "temperature"),
        ("/api/chat", {"messages": USER, "options": {"mirostat": 2}}, 400, "mirostat"),
        ("/api/chat", {"messages": USER, "options": {"typical_p": 0.5}}, 400, "typical_p"),
        ("/api/chat", {"messages": USER, "think": True}, 400, "thinking"),
        ("/api/chat", {"messages": USER, "bogus": 1}, 400, "bogus"),
        ("/api/chat", {"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, 400, "text only"),
        ("/api/chat", {"messages": USER, "format": "yaml"}, 400, "format"),
        ("/api/chat", {"messages": USER, "format": {"type": "frobnicate"}}, 400, "frobnicate"),
        ("/api/generate", {"prompt": "x", "template": "{{ .Prompt }}"}, 400, "template"),
        ("/api/generate", {"prompt": "x", "images": ["aGk="]}, 400, "text only"),
        ("/api/generate", {"prompt": "x", "suffix": "y"}, 400, "insert"),
        ("/api/generate", {"prompt": "x", "context": [5000]}, 400, "context"),
        ("/api/chat", {"model": "other", "messages": USER}, 404, "other"),
        ("/api/show", {"model": "other"}, 404, "other"),
        ("/api/show", {"model": ""}, 400, "model"),
    ],
)
def test_bad_requests_get_ollama_errors(fake_server, path, body, status, contains):
    server = fake_server()
    assert_ollama_error(httpx.post(server.url + path, json={"model": "fake", **body}), status, contains)
    assert server.engine.added == []


def test_malformed_json_and_curl_style_bodies(fake_server):
    server = fake_server()
    assert_ollama_error(httpx.post(server.url + "/api/chat", content=b"{oops"), 400, "JSON")
    assert_ollama_error(httpx.get(server.url + "/api/nothing"), 404, "/api/nothing")
    # `curl -d '{...}'` sends a form content type; Ollama reads the JSON anyway
    body = json.dumps({"model": "fake", "prompt": "hi", "stream": False})
    response = httpx.post(server.url + "/api/generate", content=body,
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200 and response.json()["response"] == "Hello from the fake engine."


def test_continue_style_chat_body_is_accepted(fake_server):
    """What Continue's Ollama provider sends: raw and keep_alive on /api/chat, num_ctx from its own
    setting, a bearer header with no key configured."""
    server = fake_server()
    body = {"model": "fake", "messages": USER, "raw": True, "keep_alive": 1800, "stream": True,
            "options": {"temperature": 0.2, "num_predict": 20, "num_ctx": 8192, "stop": ["\n\n"]}}
    response = httpx.post(server.url + "/api/chat", json=body, headers={"Authorization": "Bearer undefined"})
    assert response.status_code == 200, response.text
    assert ndjson_lines(response.text)[-1]["done"] is True


def test_format_becomes_a_json_constraint(fake_server):
    server = fake_server()
    post(server, "/api/chat", messages=USER, stream=False, format="json")
    assert server.engine.added[-1].params.structured_outputs.json_object
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    post(server, "/api/generate", prompt="x", stream=False, format=schema)
    assert json.loads(server.engine.added[-1].params.structured_outputs.json) == schema


def test_tags_show_ps_version(fake_server):
    server = fake_server(fim=True, max_model_len=300)
    version = httpx.get(server.url + "/api/version").json()["version"]
    assert version.count(".") == 2
    [tag] = httpx.get(server.url + "/api/tags").json()["models"]
    assert tag["name"] == tag["model"] == "fake:latest"
    assert set(tag["details"]) >= {"format", "family", "parameter_size", "quantization_level"}
    show = httpx.post(server.url + "/api/show", json={"model": "fake:latest"}).json()
    assert show["capabilities"] == ["completion", "tools", "insert"]
    assert ".Suffix" in show["template"] and "<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>" in show["template"]
    assert show["model_info"]["llama.context_length"] == 300
    assert show["parameters"].splitlines()[0] == "num_ctx 300"
    [loaded] = httpx.get(server.url + "/api/ps").json()["models"]
    assert loaded["name"] == "fake:latest" and loaded["context_length"] == 300 and loaded["expires_at"] > "2100"
    assert httpx.get(server.url + "/").text == "localllm is running"


def test_show_without_fim_has_no_insert(fake_server):
    server = fake_server()
    show = httpx.post(server.url + "/api/show", json={"name": "fake"}).json()
    assert "insert" not in show["capabilities"] and ".Suffix" not in show["template"]


def test_generate_with_suffix_builds_the_fim_prompt(fake_server):
    server = fake_server(fim=True)
    body = post(server, "/api/generate", prompt="def f(", suffix="return x", stream=False).json()
    assert body["done"] is True
    assert server.engine.added[-1].prompt == "<|fim_prefix|>def f(<|fim_suffix|>return x<|fim_middle|>"


def test_logprobs_in_ollamas_shape(fake_server):
    server = fake_server()
    body = post(server, "/api/chat", messages=USER, stream=False, logprobs=True, top_logprobs=1).json()
    assert body["logprobs"][0] == {"token": "Hello", "logprob": -0.25, "top_logprobs": [{"token": "Hello", "logprob": -0.25}]}
    assert len(body["logprobs"]) == 6
