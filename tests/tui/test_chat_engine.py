"""The chat app on the real engine: SmolLM2-135M, float32 on the CPU, greedy, short answers."""

from __future__ import annotations

import pytest

from localllm.sampling_params import SamplingParams
from localllm.tui.conversation import ASSISTANT
from localllm.tui.engine_backend import EngineBackend
from localllm.tui.settings import ChatSettings
from tests.tui.conftest import SIZE, engine_leftovers, ready, screen_text, send, until

pytestmark = pytest.mark.slow

GREEDY = ChatSettings(temperature=0.0, max_tokens=12)


def make_engine_app(make_app, llm, settings=GREEDY):
    backend = EngineBackend("smollm2", llm=llm)
    deltas = []
    stream = backend.stream

    async def counting_stream(*args):
        async for delta in stream(*args):
            deltas.append(delta)
            yield delta

    backend.stream = counting_stream
    return make_app(backend, settings=settings), deltas


def test_load_reports_its_steps_and_leaves_the_engine_idle(smollm2_engine):
    llm, info, steps = smollm2_engine
    labels = list(dict.fromkeys(step.label for step in steps))
    assert labels[0] == "import torch and the engine" and labels[1].startswith("find ")
    assert labels[2] == f"open {llm.engine.config.model.path}"
    assert labels[3:] == ["load weights", "set up the KV cache", "warm up"]
    weights = [step for step in steps if step.label == "load weights"]
    assert weights[0].done == 0 and weights[-1].done == weights[-1].total > 100
    assert info.quantization.startswith("float32") and info.max_model_len == 1024
    assert engine_leftovers(llm.engine) == []


async def test_answer_streams_and_is_the_engines_greedy_answer(make_app, smollm2_engine):
    llm, _, _ = smollm2_engine
    app, deltas = make_engine_app(make_app, llm)
    question = "What is the capital of France?"
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, question)
        answer = app.chat_screen.conversation.messages[-1]
        assert answer.role == ASSISTANT and answer.content.strip()
        assert answer.content.split()[0] in screen_text(app)
    assert len([d for d in deltas if d.text]) >= 2  # streamed, not delivered at once
    prompt = llm.render_chat([{"role": "user", "content": question}])
    expected = [out async for out in llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=12), "check")]
    assert answer.content == expected[-1].outputs[0].text
    assert answer.meta["num_generated_tokens"] == len(expected[-1].outputs[0].token_ids)
    assert answer.meta["tokens_per_second"] > 0 and answer.meta["ttft"] > 0
    assert engine_leftovers(llm.engine) == []


async def test_second_turn_reuses_the_first_turns_blocks(make_app, smollm2_engine):
    llm, _, _ = smollm2_engine
    llm.engine.scheduler.kv_cache_manager.reset_prefix_cache()
    app, _ = make_engine_app(make_app, llm)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Name a fruit that is red and sweet, please.")
        first = app.chat_screen.conversation.messages[-1].meta
        await send(pilot, "And one that is yellow?")
        second = app.chat_screen.conversation.messages[-1].meta
        assert f"cached {second['num_cached_tokens']}" in screen_text(app)
    block = llm.engine.config.cache.block_size
    assert first["num_cached_tokens"] == 0
    # Turn 2's prompt starts with turn 1's prompt and answer: their full blocks are not recomputed.
    assert second["num_cached_tokens"] >= block * (first["num_prompt_tokens"] // block) > 0
    assert engine_leftovers(llm.engine) == []


async def test_escape_mid_answer_aborts_in_the_engine_and_frees_its_blocks(make_app, smollm2_engine):
    llm, _, _ = smollm2_engine
    app, deltas = make_engine_app(make_app, llm, ChatSettings(temperature=0.0, max_tokens=400))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        screen = app.chat_screen
        screen.prompt.load_text("Count from 1 to 200, separated by commas.")
        await pilot.press("enter")
        await until(pilot, lambda: sum(d.num_new_tokens for d in deltas) >= 4, timeout=30, what="4 tokens")
        used, _ = app.backend.kv_cache_usage()
        assert used > 0 and screen.answering is not None
        await pilot.press("escape")
        await until(pilot, lambda: screen.answering is None, timeout=5, what="the stop")
        # NOTE: no wait: the engine freed the blocks before it sent the final "abort" output.
        assert engine_leftovers(llm.engine) == []
        answer = screen.conversation.messages[-1]
        assert answer.meta["finish_reason"] == "abort" and answer.meta["num_generated_tokens"] < 400
        assert deltas[-1].finish_reason == "abort"
        await pilot.pause()
        assert "stopped" in screen_text(app)
