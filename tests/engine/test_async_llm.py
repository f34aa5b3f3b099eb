"""AsyncLLM on the real SmolLM2: streaming deltas, concurrent requests, leaving early (break,
cancel, abort) frees the request's blocks at once, a bad prompt raises before anything
streams, shutdown."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from localllm import SamplingParams
from localllm.engine.async_llm import AsyncLLM, EngineDeadError
from localllm.errors import PromptTooLongError
from localllm.sampling_params import RequestOutputKind
from tests.engine.conftest import assert_engine_idle, engine_leftovers

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "1, 2, 3, 4,"]
MAX_TOKENS = 12


def greedy(max_tokens: int = MAX_TOKENS, kind: RequestOutputKind = RequestOutputKind.DELTA, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, output_kind=kind, **kwargs)


@pytest.fixture(scope="module")
def offline_answers(smollm2_llm) -> dict:
    """Non-streamed greedy answers, made with LLM before the AsyncLLM thread owns the engine."""
    outputs = smollm2_llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    return {o.prompt: o.outputs[0] for o in outputs}


@pytest.fixture(scope="module")
def async_llm(smollm2_llm, offline_answers):
    engine = AsyncLLM(engine=smollm2_llm.engine)
    yield engine
    engine.shutdown()
    assert not engine._thread.is_alive()


async def wait_idle(engine: AsyncLLM, timeout: float = 2.0) -> None:
    """Like assert_engine_idle, but lets the event loop run meanwhile (an async generator left by
    `break` is closed by a task the loop schedules)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while engine_leftovers(engine.engine) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert_engine_idle(engine.engine)


async def collect(engine: AsyncLLM, prompt, params: SamplingParams, request_id: str, events: list | None = None):
    outputs = []
    async for output in engine.generate(prompt, params, request_id):
        outputs.append(output)
        if events is not None:
            events.append(request_id)
    return outputs


async def test_streamed_deltas_add_up_to_the_offline_answer(async_llm, offline_answers):
    prompt = PROMPTS[0]
    outputs = await collect(async_llm, prompt, greedy(), "stream-1")
    assert len(outputs) > 1
    assert [o.finished for o in outputs] == [False] * (len(outputs) - 1) + [True]
    assert all(o.request_id == "stream-1" and o.prompt == prompt for o in outputs)
    expected = offline_answers[prompt]
    assert "".join(o.outputs[0].text for o in outputs) == expected.text
    assert [t for o in outputs for t in o.outputs[0].token_ids] == expected.token_ids
    assert outputs[-1].outputs[0].finish_reason == expected.finish_reason


async def test_cumulative_and_final_only_kinds(async_llm, offline_answers):
    prompt = PROMPTS[1]
    cumulative = await collect(async_llm, prompt, greedy(kind=RequestOutputKind.CUMULATIVE), "cumulative")
    texts = [o.outputs[0].text for o in cumulative]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert texts[-1] == offline_answers[prompt].text
    final = await collect(async_llm, prompt, greedy(kind=RequestOutputKind.FINAL_ONLY), "final-only")
    assert len(final) == 1 and final[0].finished
    assert final[0].outputs[0].token_ids == offline_answers[prompt].token_ids


async def test_concurrent_requests(async_llm, offline_answers):
    events: list[str] = []
    results = await asyncio.gather(
        *(collect(async_llm, p, greedy(), f"concurrent-{i}", events) for i, p in enumerate(PROMPTS))
    )
    for prompt, outputs in zip(PROMPTS, results):
        assert "".join(o.outputs[0].text for o in outputs) == offline_answers[prompt].text
    # They ran together: each one's stream started before another's ended.
    first_end = min(max(i for i, e in enumerate(events) if e == f"concurrent-{k}") for k in range(len(PROMPTS)))
    assert len({e for e in events[:first_end]}) == len(PROMPTS)
    await wait_idle(async_llm)


async def test_breaking_out_aborts_and_frees_blocks(async_llm):
    seen = 0
    async for output in async_llm.generate(PROMPTS[2], greedy(500, ignore_eos=True), "leave-early"):
        seen += 1
        assert not output.finished
        if seen == 2:
            break
    await wait_idle(async_llm)
    assert async_llm.stats()["kv_blocks_used"] == 0 and async_llm.stats()["num_running"] == 0


async def test_cancelling_the_task_aborts_and_frees_blocks(async_llm):
    started = asyncio.Event()

    async def consume():
        async for _ in async_llm.generate(PROMPTS[3], greedy(500, ignore_eos=True), "cancel-me"):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), timeout=30)
    assert async_llm.stats()["kv_blocks_used"] > 0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await wait_idle(async_llm)


async def test_abort_by_request_id(async_llm):
    started = asyncio.Event()
    outputs = []

    async def consume():
        async for output in async_llm.generate(PROMPTS[0], greedy(500, ignore_eos=True), "abort-me"):
            outputs.append(output)
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), timeout=30)
    await async_llm.abort("abort-me")
    # The stream ends with a final output marked "abort"; nothing is left in the engine.
    await asyncio.wait_for(task, timeout=5)
    assert outputs[-1].finished and outputs[-1].outputs[0].finish_reason == "abort"
    assert len(outputs) < 500
    await wait_idle(async_llm)
    await async_llm.abort("no-such-request")  # harmless


async def test_too_long_prompt_raises_before_streaming(async_llm):
    stream = async_llm.generate({"prompt_token_ids": [28] * 2000}, greedy(), "too-long")
    with pytest.raises(PromptTooLongError, match="2000"):
        await stream.__anext__()
    with pytest.raises(ValueError):
        await collect(async_llm, {"prompt_token_ids": []}, greedy(), "empty")
    assert "too-long" not in async_llm._streams
    assert_engine_idle(async_llm.engine)
    # The id is free again, and the engine still answers.
    assert (await collect(async_llm, PROMPTS[0], greedy(2), "too-long"))[-1].finished


async def test_duplicate_request_id_is_refused(async_llm):
    started = asyncio.Event()

    async def consume():
        async for _ in async_llm.generate(PROMPTS[1], greedy(500, ignore_eos=True), "dup"):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), timeout=30)
    with pytest.raises(ValueError, match="dup"):
        await collect(async_llm, PROMPTS[2], greedy(2), "dup")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await wait_idle(async_llm)


async def test_shutdown(tiny_models):
    path, _ = tiny_models["llama"]
    engine = AsyncLLM(path, dtype="float32", device="cpu", kv_cache_blocks=32)
    params = greedy(4)
    outputs = await collect(engine, {"prompt_token_ids": [5, 6, 7]}, params, "before")
    assert outputs[-1].finished

    # A request still streaming when the engine shuts down hears of it and its blocks are freed.
    started = asyncio.Event()

    async def consume():
        async for _ in engine.generate({"prompt_token_ids": [5, 6, 7]}, greedy(500, ignore_eos=True), "during"):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), timeout=30)
    await asyncio.to_thread(engine.shutdown)
    assert not engine._thread.is_alive()
    with pytest.raises(EngineDeadError):
        await asyncio.wait_for(task, timeout=5)
    assert_engine_idle(engine.engine)
    with pytest.raises(EngineDeadError):
        await collect(engine, {"prompt_token_ids": [5, 6, 7]}, params, "after")


def test_the_engine_thread_loads_the_model_and_load_errors_reach_the_caller(monkeypatch, tiny_models):
    """The model loads on the engine thread (one thread does all of the engine's torch work: a
    second OpenMP team on the cores makes every CPU op wait for its workers), and a load failure
    is raised in the thread that made the AsyncLLM."""
    import threading

    from localllm.engine import async_llm as module
    from localllm.errors import ModelLoadError

    loaded_on = []
    real = module.LLMEngine.from_options

    def recording(model, **options):
        loaded_on.append(threading.current_thread().name)
        return real(model, **options)

    monkeypatch.setattr(module.LLMEngine, "from_options", staticmethod(recording))
    path, _ = tiny_models["llama"]
    llm = AsyncLLM(path, max_model_len=64)
    try:
        assert loaded_on == ["localllm-engine"] and llm.is_running
    finally:
        llm.shutdown()

    def failing(model, **options):
        raise ModelLoadError(model, "not a model")

    monkeypatch.setattr(module.LLMEngine, "from_options", staticmethod(failing))
    with pytest.raises(ModelLoadError, match="not a model"):
        AsyncLLM("broken")
