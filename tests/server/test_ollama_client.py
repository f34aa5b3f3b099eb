"""The official `ollama` Python client against `localllm serve` on SmolLM2."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import ollama
import pytest

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def client(real_server):
    return ollama.Client(host=real_server.url, timeout=120)


def test_chat(client):
    response = client.chat(model="smollm2", messages=MESSAGES, options={"num_predict": 12, "temperature": 0})
    assert response.message.role == "assistant" and response.message.content.strip()
    assert response.done and response.done_reason in ("stop", "length")
    assert 0 < response.eval_count <= 12 and response.prompt_eval_count > 5
    assert response.total_duration > response.eval_duration > 0
    assert response.total_duration >= response.load_duration > 0  # the model's load (first answer) or the wait before generating


def test_chat_stream_matches(client):
    options = {"num_predict": 12, "temperature": 0}
    whole = client.chat(model="smollm2", messages=MESSAGES, options=options).message.content
    parts = list(client.chat(model="smollm2", messages=MESSAGES, options=options, stream=True))
    assert "".join(p.message.content for p in parts) == whole
    assert parts[-1].done and not any(p.done for p in parts[:-1])


def test_generate_and_context(client):
    response = client.generate(model="smollm2", prompt="Why is the sky blue?", options={"num_predict": 8, "temperature": 0})
    assert response.response and response.done and response.context
    follow = client.generate(model="smollm2", prompt="Say it shorter.", context=response.context,
                             options={"num_predict": 4, "temperature": 0})
    assert follow.prompt_eval_count > len(response.context)
    raw = list(client.generate(model="smollm2:latest", prompt="1, 2, 3,", raw=True, stream=True,
                               options={"num_predict": 4, "temperature": 0}))
    assert raw[-1].done and "".join(p.response for p in raw)


def test_structured_format(client):
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 20}}, "required": ["colour"]}
    response = client.chat(model="smollm2", messages=[{"role": "user", "content": "Pick a colour."}], format=schema,
                           options={"num_predict": 40, "temperature": 0})
    jsonschema.validate(json.loads(response.message.content), schema)


def test_tags_show_ps(client):
    [model] = client.list().models
    assert model.model == "smollm2:latest" and model.size > 50_000_000
    assert model.details.format == "gguf" and model.details.family == "llama"
    assert model.details.parameter_size == "134.5M" and model.details.quantization_level == "Q4_1"
    show = client.show("smollm2")
    assert "completion" in show.capabilities and "insert" not in show.capabilities  # SmolLM2 has no FIM tokens
    assert show.modelinfo["llama.context_length"] == 2048 and "<|im_start|>" in show.template
    [loaded] = client.ps().models
    assert loaded.model == "smollm2:latest" and loaded.context_length == 2048 and loaded.size > model.size
    with pytest.raises(ollama.ResponseError) as info:
        client.show("llama3")
    assert info.value.status_code == 404


def test_errors(client):
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="smollm2", messages=MESSAGES, options={"num_ctx": 16})
    assert info.value.status_code == 400 and "16 tokens" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model="smollm2", prompt="x", suffix="y")
    assert info.value.status_code == 400 and "insert" in info.value.error


def test_async_client(real_server):
    async def run():
        client = ollama.AsyncClient(host=real_server.url, timeout=120)
        return await client.chat(model="smollm2", messages=MESSAGES, options={"num_predict": 4, "temperature": 0})

    assert asyncio.run(run()).message.content
