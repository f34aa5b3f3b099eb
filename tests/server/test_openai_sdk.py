"""The official `openai` SDK against `localllm serve` on SmolLM2 (float32, CPU)."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import openai
import pytest

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Name three colours."}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"]}}}


@pytest.fixture(scope="module")
def client(real_server):
    return openai.OpenAI(base_url=real_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def greedy_answer(client):
    response = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=16, temperature=0)
    return response


def test_models_list_has_the_context_length(client):
    [model] = client.models.list().data
    assert model.id == "smollm2" and model.model_extra["max_model_len"] == 2048


def test_chat_non_streaming(greedy_answer):
    choice = greedy_answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = greedy_answer.usage
    assert usage.completion_tokens <= 16 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 16


def test_chat_streaming_gives_the_same_greedy_text_and_a_usage_chunk(client, greedy_answer):
    stream = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=16, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == greedy_answer.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == greedy_answer.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == greedy_answer.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == greedy_answer.choices[0].finish_reason


def test_stop_string_cuts_the_answer(client, greedy_answer):
    full = greedy_answer.choices[0].message.content
    words = full.split()
    stop = words[len(words) // 2]
    response = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=16, temperature=0, stop=[stop])
    choice = response.choices[0]
    assert choice.finish_reason == "stop" and stop not in choice.message.content
    assert full.startswith(choice.message.content)


def test_n2_with_a_seed(client):
    kwargs = dict(model="smollm2", messages=QUESTION, max_tokens=12, temperature=1.0, seed=1234, n=2)
    first = client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1]
    assert all(c.message.content for c in first.choices)
    again = client.chat.completions.create(**kwargs)
    assert [c.message.content for c in again.choices] == [c.message.content for c in first.choices]


def test_async_client_streaming_and_not(real_server):
    async def run():
        client = openai.AsyncOpenAI(base_url=real_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        plain = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=8, temperature=0)
        streamed = await client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=8,
                                                        temperature=0, stream=True)
        parts = [c.choices[0].delta.content or "" async for c in streamed]
        return (await plain).choices[0].message.content, "".join(parts)

    plain, streamed = asyncio.run(run())
    assert plain and plain == streamed


def test_forced_tool_call_follows_the_schema(client):
    response = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL], tool_choice="required", max_tokens=48, temperature=0,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])


def test_named_tool_call_streamed(client):
    stream = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Weather in Oslo, in celsius?"}],
        tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=48, temperature=0, stream=True,
    )
    chunks = [c for c in stream if c.choices]
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    # As OpenAI streams a call: id and name first, then the arguments in fragments.
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather" and len(deltas) > 2
    assert all(d.index == 0 and d.id is None and d.function.name is None for d in deltas[1:])
    arguments = "".join(d.function.arguments or "" for d in deltas)
    jsonschema.validate(json.loads(arguments), WEATHER_TOOL["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "stop"  # a call forced by name ends with "stop", as OpenAI's


def test_json_schema_output_parses_and_validates(client):
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "age", "colours"],
              "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
                             "colours": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}}}
    response = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Describe a person as JSON."}], max_tokens=80,
        temperature=0.7, seed=5,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
    )
    assert response.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(response.choices[0].message.content), schema)
    response = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": 'Give me a JSON object like {"name": "Bob"}.'}],
        max_tokens=60, temperature=0, response_format={"type": "json_object"},
    )
    assert response.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(response.choices[0].message.content), dict)


def test_completions_echo_logprobs_score_the_prompt(client):
    prompt = "The capital of France is Paris"
    response = client.completions.create(model="smollm2", prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    choice = response.choices[0]
    lp = choice.logprobs
    assert choice.text == prompt and "".join(lp.tokens) == prompt
    assert lp.token_logprobs[0] is None and all(v <= 0 for v in lp.token_logprobs[1:])
    # Scored again, one token longer: the shared prefix scores the same (lm-eval's loglikelihood).
    longer = client.completions.create(model="smollm2", prompt=prompt + ".", max_tokens=1, echo=True, logprobs=1)
    assert longer.choices[0].logprobs.token_logprobs[: len(lp.tokens)] == pytest.approx(lp.token_logprobs, abs=1e-4)
    greedy = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=3, temperature=0)
    assert greedy.choices[0].text and greedy.usage.completion_tokens <= 3


def test_errors_from_the_real_engine(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "word " * 2100}], max_tokens=4)
    assert info.value.code == "context_length_exceeded" and "2048" in info.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="FIM"):
        client.completions.create(model="smollm2", prompt="def f(", suffix="return 1")
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=5)


def test_metrics_count_the_work(real_server):
    metrics = real_server.wait_idle()
    assert metrics["localllm_kv_blocks_total"] == 768
    assert metrics["localllm_prompt_tokens_total"] > 0 and metrics["localllm_generation_tokens_total"] > 0
    assert metrics["localllm_time_to_first_token_seconds_count"] > 0
    assert metrics["localllm_inter_token_latency_seconds_count"] > 0
