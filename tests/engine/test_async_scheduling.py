"""Async scheduling on a real (tiny, random-weight) model on the CPU: the engine launches the
next decode step before reading back the current one's tokens. Whatever the requests ask for,
the outputs must be exactly those of the synchronous engine, and steady decode must run ahead.
"""

from __future__ import annotations

import pytest

from localllm import SamplingParams
from localllm.engine.llm_engine import LLMEngine
from tests.engine.conftest import engine_leftovers, parity_options


def _prompts(n: int, shared: int = 20) -> list[dict]:
    prefix = [3 + (7 * i) % 250 for i in range(shared)]  # shared: prefix-cache hits across requests
    return [{"prompt_token_ids": prefix + [3 + (11 * i + 5 * j) % 250 for j in range(3 + 4 * i)]} for i in range(n)]


def _stop_token_from(sync_output, index: int) -> int:
    return sync_output.outputs[0].token_ids[index]


class LaunchSpy:
    """Counts the runner's launches, and those made with a step still in flight."""

    def __init__(self, engine: LLMEngine) -> None:
        self.launches = self.ahead = 0
        self.events: list[str] = []
        runner = engine.runner
        launch, collect = runner.launch, runner.collect

        def spy_launch(scheduler_output, in_flight=None):
            self.launches += 1
            self.ahead += in_flight is not None
            self.events.append("launch+" if in_flight is not None else "launch")
            return launch(scheduler_output, in_flight)

        def spy_collect(launched):
            self.events.append("collect")
            return collect(launched)

        runner.launch, runner.collect = spy_launch, spy_collect


def _compare(sync_outputs, async_outputs) -> None:
    assert len(sync_outputs) == len(async_outputs)
    for want, got in zip(sync_outputs, async_outputs):
        assert got.prompt_token_ids == want.prompt_token_ids
        assert len(got.outputs) == len(want.outputs)
        for w, g in zip(want.outputs, got.outputs):
            assert g.token_ids == w.token_ids, got.request_id
            assert (g.text, g.finish_reason, g.stop_reason) == (w.text, w.finish_reason, w.stop_reason)
            if w.logprobs is not None:
                assert [list(d) for d in g.logprobs] == [list(d) for d in w.logprobs]
                for dw, dg in zip(w.logprobs, g.logprobs):
                    for token in dw:
                        assert dg[token].logprob == pytest.approx(dw[token].logprob, abs=1e-5)
                        assert dg[token].rank == dw[token].rank
        if want.prompt_logprobs is not None:
            assert [None if d is None else sorted(d) for d in got.prompt_logprobs] == \
                   [None if d is None else sorted(d) for d in want.prompt_logprobs]


@pytest.fixture
def tiny_llama(tiny_models) -> str:
    return tiny_models["llama"][0]


def _pair(make_llm, path, **options):
    sync = make_llm(path, async_scheduling=False, **options)
    ahead = make_llm(path, async_scheduling=True, **options)
    return sync, ahead


def test_outputs_equal_the_synchronous_engine_and_decode_runs_ahead(make_llm, tiny_llama):
    sync, ahead = _pair(make_llm, tiny_llama, max_num_seqs=4)
    prompts = _prompts(10)
    first = sync.generate(prompts, SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True))
    params = [
        SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=30, stop_token_ids=[_stop_token_from(first[1], 6)]),
        SamplingParams(temperature=0.9, top_p=0.9, top_k=40, seed=7, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=16, logprobs=3, ignore_eos=True),
        SamplingParams(temperature=1.0, min_p=0.05, seed=3, n=2, max_tokens=12, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=30, stop=[first[5].outputs[0].text.split()[4]]),
        SamplingParams(temperature=0.0, max_tokens=1),
        SamplingParams(temperature=0.0, max_tokens=10, prompt_logprobs=2, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=30, stop_token_ids=[_stop_token_from(first[8], 0)]),
        SamplingParams(temperature=0.0, max_tokens=40),  # the model's own EOS, if it comes
    ]
    want = sync.generate(prompts, params)
    spy = LaunchSpy(ahead.engine)
    got = ahead.generate(prompts, params)
    _compare(want, got)
    assert want[1].outputs[0].finish_reason == "stop" and len(want[1].outputs[0].token_ids) <= 7
    assert want[5].outputs[0].finish_reason == "stop" and want[8].outputs[0].finish_reason == "stop"
    # Every step after a sampling step with nobody waiting runs ahead: most of them here.
    assert spy.ahead > 0.5 * spy.launches, (spy.ahead, spy.launches)


def test_rows_that_read_their_own_tokens_fall_back_and_still_agree(make_llm, tiny_llama):
    sync, ahead = _pair(make_llm, tiny_llama)
    prompts = _prompts(4)
    params = [
        SamplingParams(temperature=0.0, max_tokens=20, repetition_penalty=1.3, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=0.8, seed=1, max_tokens=20, presence_penalty=0.5, frequency_penalty=0.5,
                       ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=20, min_tokens=15),
    ]
    want = sync.generate(prompts, params)
    spy = LaunchSpy(ahead.engine)
    _compare(want, ahead.generate(prompts, params))
    # The penalized rows run to the end, so no step may run ahead of them.
    assert spy.ahead == 0
    # Alone, min_tokens only holds the first steps back.
    spy = LaunchSpy(ahead.engine)
    _compare(sync.generate(prompts[3:], params[3:]), ahead.generate(prompts[3:], params[3:]))
    assert spy.ahead > 0


def test_min_tokens_boundary_agrees(make_llm, tiny_llama):
    """min_tokens bans the stop token until it is reached; a step run ahead must not lift the ban
    one token early (it counts the outputs the host knows, one short)."""
    sync, ahead = _pair(make_llm, tiny_llama)
    prompt = _prompts(1)
    free = sync.generate(prompt, SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True))[0].outputs[0]
    tokens = free.token_ids
    m = next(j for j in range(3, 20) if tokens[j] not in tokens[:j])  # first time this token comes
    params = SamplingParams(temperature=0.0, max_tokens=20, min_tokens=m, stop_token_ids=[tokens[m]], ignore_eos=True)
    want = sync.generate(prompt, params)
    assert want[0].outputs[0].finish_reason == "stop" and len(want[0].outputs[0].token_ids) == m + 1
    _compare(want, ahead.generate(prompt, params))


def test_preemption_under_a_small_cache_agrees(make_llm, tiny_llama):
    sync, ahead = _pair(make_llm, tiny_llama, kv_cache_blocks=12, max_num_seqs=8)
    prompts = _prompts(6, shared=8)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    want = sync.generate(prompts, params)
    spy = LaunchSpy(ahead.engine)
    _compare(want, ahead.generate(prompts, params))
    assert ahead.engine.scheduler.num_preemptions > 0 and spy.ahead > 0


def test_steady_decode_launches_the_next_step_before_reading_this_one(make_llm, tiny_llama):
    _, ahead = _pair(make_llm, tiny_llama)
    spy = LaunchSpy(ahead.engine)
    ahead.generate(_prompts(1), SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    # The prefill step, then each decode step launched before the previous one is collected; the
    # 6th token's step is not launched (max_tokens is known to end the request there).
    assert spy.events == ["launch"] + ["launch+", "collect"] * 5 + ["collect"]


def test_abort_with_a_step_in_flight(make_llm, tiny_llama):
    sync, ahead = _pair(make_llm, tiny_llama)
    prompts = _prompts(3)
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    want = sync.generate(prompts, params)
    engine = ahead.engine
    for i, prompt in enumerate(prompts):
        engine.add_request(f"q{i}", prompt, params)
    finished = {}
    steps = 0
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
        steps += 1
        if steps == 5:
            assert engine._in_flight is not None
            for output in engine.abort_request("q1"):
                finished[output.request_id] = output
    assert sorted(finished) == ["q0", "q1", "q2"]
    assert finished["q1"].outputs[0].finish_reason == "abort"
    for i in (0, 2):
        assert finished[f"q{i}"].outputs[0].token_ids == want[i].outputs[0].token_ids
    assert engine._in_flight is None and not engine_leftovers(engine)


def test_abort_of_everything_in_flight_leaves_the_engine_idle(tiny_llama):
    engine = LLMEngine.from_options(tiny_llama, async_scheduling=True, **parity_options())
    engine.add_request("only", _prompts(1)[0], SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert engine._in_flight is not None
    engine.abort_request("only")
    assert not engine.has_unfinished_requests()
    # The next step drops what was in flight and runs the newcomer's prefill: k steps, k tokens.
    engine.add_request("next", _prompts(2)[1], SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    outputs = [engine.step() for _ in range(3)]
    assert [len(o[0].outputs[0].token_ids) for o in outputs] == [1, 2, 3] and outputs[2][0].finished
    assert engine._in_flight is None and not engine_leftovers(engine)


def test_the_default_is_off_on_the_cpu(make_llm, tiny_llama):
    assert make_llm(tiny_llama).engine.async_scheduling is False
