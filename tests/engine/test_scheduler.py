import random

import pytest

from localllm.config import CacheConfig, SchedulerConfig
from localllm.engine.request import Request, RequestStatus
from localllm.engine.scheduler import Scheduler
from localllm.sampling_params import SamplingParams, StructuredOutputsParams
from tests.engine.fake_runner import FakeRunner, next_token


def expected_output(prompt, max_tokens):
    tokens = list(prompt)
    out = []
    for _ in range(max_tokens):
        t = next_token(tokens)
        tokens.append(t)
        out.append(t)
    return out


def run_to_completion(scheduler, runner, async_scheduling=False, max_steps=10_000):
    """LLMEngine.step's order without the output processor: with async scheduling the next
    step is scheduled and launched before this one's tokens are collected."""
    in_flight = None
    for _ in range(max_steps):
        if in_flight is None:
            if not scheduler.has_unfinished_requests():
                return
            so = scheduler.schedule()
            in_flight = (so, runner.launch(so))
        so, launched = in_flight
        assert so.total_num_scheduled_tokens <= scheduler.config.max_num_batched_tokens
        assert len(scheduler.running) <= scheduler.config.max_num_seqs
        in_flight = None
        if async_scheduling:
            ahead = scheduler.schedule_ahead(so)
            if ahead is not None:
                in_flight = (ahead, runner.launch(ahead, launched))
        scheduler.update_from_output(so, runner.collect(launched))
    raise AssertionError("scheduler did not finish")


def make_scheduler(num_blocks, block_size=4, budget=64, max_seqs=16, caching=True, max_len=4096):
    return Scheduler(
        SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget, max_model_len=max_len),
        CacheConfig(block_size=block_size, enable_prefix_caching=caching),
        num_blocks,
    )


def requests_for(prompts, max_tokens):
    return [Request(f"r{i}", p, SamplingParams(max_tokens=m, ignore_eos=True)) for i, (p, m) in enumerate(zip(prompts, max_tokens))]


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    "num_blocks,budget,max_seqs,caching",
    [
        (400, 512, 32, True),  # roomy: one prefill step each, then batched decode
        (400, 7, 32, True),  # chunked prefill under a tiny budget
        (24, 64, 32, True),  # preemption by recompute
        (24, 5, 3, False),  # everything at once, no caching
    ],
)
def test_outputs_do_not_depend_on_batching(num_blocks, budget, max_seqs, caching, async_scheduling):
    rng = random.Random(0)
    shared = [rng.randrange(1000) for _ in range(9)]
    prompts = [shared + [rng.randrange(1000) for _ in range(rng.randrange(1, 30))] for _ in range(18)]
    max_tokens = [rng.randrange(1, 20) for _ in prompts]
    scheduler = make_scheduler(num_blocks, budget=budget, max_seqs=max_seqs, caching=caching)
    runner = FakeRunner(block_size=4)
    requests = requests_for(prompts, max_tokens)
    for r in requests:
        scheduler.add_request(r)
    run_to_completion(scheduler, runner, async_scheduling)
    for r, p, m in zip(requests, prompts, max_tokens):
        assert r.output_token_ids == expected_output(p, m), r.request_id
        assert r.status == RequestStatus.FINISHED_LENGTH
    kv = scheduler.kv_cache_manager
    assert kv.num_free_blocks == num_blocks, "leaked blocks"
    assert kv.req_to_blocks == {} and scheduler.requests == {}
    if num_blocks == 24:
        assert scheduler.num_preemptions > 0
    if budget == 7:
        assert max(runner.tokens_per_step) <= 7
    assert (runner.num_ahead > 0) == async_scheduling


def test_prefix_cache_hits_are_reported():
    scheduler = make_scheduler(100)
    runner = FakeRunner(block_size=4)
    prompt = list(range(20))
    first = Request("a", prompt, SamplingParams(max_tokens=2, ignore_eos=True))
    scheduler.add_request(first)
    run_to_completion(scheduler, runner)
    second = Request("b", prompt + [5, 6], SamplingParams(max_tokens=2, ignore_eos=True))
    scheduler.add_request(second)
    so = scheduler.schedule()
    assert so.num_cached_tokens == {"b": 20}
    assert so.num_scheduled_tokens == [2]
    scheduler.update_from_output(so, runner.execute_model(so))
    run_to_completion(scheduler, runner)
    assert second.output_token_ids == expected_output(prompt + [5, 6], 2)


def test_max_num_seqs_caps_the_batch():
    scheduler = make_scheduler(200, max_seqs=3)
    runner = FakeRunner(block_size=4)
    for r in requests_for([[i, i + 1] for i in range(7)], [5] * 7):
        scheduler.add_request(r)
    run_to_completion(scheduler, runner)
    assert max(runner.batch_sizes) == 3


def test_abort_frees_blocks_at_once():
    scheduler = make_scheduler(50)
    runner = FakeRunner(block_size=4)
    reqs = requests_for([list(range(10)), list(range(30, 45))], [100, 100])
    for r in reqs:
        scheduler.add_request(r)
    for _ in range(3):
        so = scheduler.schedule()
        scheduler.update_from_output(so, runner.execute_model(so))
    assert scheduler.kv_cache_manager.num_free_blocks < 50
    scheduler.finish_requests(["r0", "r1"], RequestStatus.FINISHED_ABORTED)
    assert scheduler.kv_cache_manager.num_free_blocks == 50
    assert not scheduler.has_unfinished_requests()
    so = scheduler.schedule()
    assert so.finished_req_ids == {"r0", "r1"} and so.is_empty


def test_abort_of_waiting_request():
    scheduler = make_scheduler(50, max_seqs=1)
    for r in requests_for([[1, 2, 3], [4, 5, 6]], [5, 5]):
        scheduler.add_request(r)
    scheduler.schedule()
    scheduler.finish_requests("r1", RequestStatus.FINISHED_ABORTED)
    assert scheduler.num_waiting == 0


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_stops_on_eos_stop_token_and_model_len(async_scheduling):
    scheduler = make_scheduler(100, max_len=10)
    runner = FakeRunner(block_size=4)
    prompt = [1, 2, 3]
    first = expected_output(prompt, 3)
    eos = Request("eos", prompt, SamplingParams(max_tokens=50), eos_token_ids=frozenset({first[1]}))
    stop = Request("stop", prompt, SamplingParams(max_tokens=50, stop_token_ids=[first[2]]))
    long = Request("long", prompt, SamplingParams(max_tokens=50, ignore_eos=True))
    for r in (eos, stop, long):
        scheduler.add_request(r)
    run_to_completion(scheduler, runner, async_scheduling)
    assert eos.output_token_ids == first[:2] and eos.status == RequestStatus.FINISHED_STOPPED
    assert stop.output_token_ids == first and stop.stop_reason == first[2]
    assert long.num_tokens == 10 and long.status == RequestStatus.FINISHED_LENGTH
    assert scheduler.kv_cache_manager.num_free_blocks == 100


def test_min_tokens_delays_eos():
    scheduler = make_scheduler(100)
    runner = FakeRunner(block_size=4)
    prompt = [1, 2, 3]
    first = expected_output(prompt, 4)
    r = Request("r", prompt, SamplingParams(max_tokens=4, min_tokens=3), eos_token_ids=frozenset({first[0]}))
    scheduler.add_request(r)
    run_to_completion(scheduler, runner)
    assert len(r.output_token_ids) >= 3


def test_prompt_longer_than_cache_is_refused():
    scheduler = make_scheduler(2, block_size=4)
    with pytest.raises(ValueError):
        scheduler.add_request(Request("x", list(range(9)), SamplingParams()))


# ---------------------------------------------------------------- async scheduling (schedule_ahead)


def _launched_step(scheduler, runner, prompts, max_tokens=20, **params):
    """Requests admitted and prefilled in one launched, uncollected step."""
    for i, p in enumerate(prompts):
        scheduler.add_request(Request(f"r{i}", p, SamplingParams(max_tokens=max_tokens, **params)))
    so = scheduler.schedule()
    return so, runner.launch(so)


def test_schedule_ahead_gives_each_sampling_row_its_in_flight_token():
    scheduler = make_scheduler(100)
    runner = FakeRunner(block_size=4)
    so, launched = _launched_step(scheduler, runner, [[1, 2, 3, 4, 5], [6, 7, 8, 9]])
    ahead = scheduler.schedule_ahead(so)
    assert [r.request_id for r in ahead.requests] == ["r0", "r1"]
    assert ahead.num_scheduled_tokens == [1, 1] and ahead.num_computed_tokens == [5, 4]
    # r1's 4 prompt tokens fill block 0; its in-flight token needs a second block, r0's fits.
    assert [len(b) for b in ahead.block_ids] == [2, 2]
    # Every row's last token is the in-flight one: not yet on the host.
    assert all(r.num_tokens == p for r, p in zip(ahead.requests, ahead.num_computed_tokens))
    ahead_launched = runner.launch(ahead, launched)
    scheduler.update_from_output(so, runner.collect(launched))
    scheduler.update_from_output(ahead, runner.collect(ahead_launched))
    for r, prompt in zip(ahead.requests, ([1, 2, 3, 4, 5], [6, 7, 8, 9])):
        assert r.output_token_ids == expected_output(prompt, 2) and r.num_computed_tokens == len(prompt) + 1


@pytest.mark.parametrize("case", ["waiting", "chunk", "penalty", "min_tokens", "structured", "no_blocks"])
def test_schedule_ahead_declines_when_the_host_must_see_the_tokens(case):
    scheduler = make_scheduler(3 if case == "no_blocks" else 100, budget=4 if case == "chunk" else 64)
    runner = FakeRunner(block_size=4)
    params = {"penalty": {"repetition_penalty": 1.1}, "min_tokens": {"min_tokens": 2},
              "structured": {"structured_outputs": StructuredOutputsParams(json_object=True)}}.get(case, {})
    prompts = {"chunk": [list(range(8))], "no_blocks": [list(range(8)), [1, 2, 3, 4]]}.get(case, [[1, 2, 3, 4, 5]])
    so, _ = _launched_step(scheduler, runner, prompts, **params)
    if case == "waiting":
        scheduler.add_request(Request("late", [1, 2], SamplingParams()))
    if case == "no_blocks":  # both in-flight tokens start a new block; all 3 are taken
        assert scheduler.kv_cache_manager.num_free_blocks == 0 and not scheduler.waiting
    if case == "chunk":
        assert so.num_scheduled_tokens == [4]
    assert scheduler.schedule_ahead(so) is None


def test_schedule_ahead_leaves_out_requests_the_in_flight_token_ends():
    scheduler = make_scheduler(100, max_len=7)
    runner = FakeRunner(block_size=4)
    scheduler.add_request(Request("last", [1, 2, 3], SamplingParams(max_tokens=1)))
    scheduler.add_request(Request("full", [4, 5, 6, 7, 8, 9], SamplingParams(max_tokens=50)))
    scheduler.add_request(Request("goes_on", [1, 2], SamplingParams(max_tokens=2)))
    so = scheduler.schedule()
    ahead = scheduler.schedule_ahead(so)
    assert [r.request_id for r in ahead.requests] == ["goes_on"]
    runner.launch(so)
    scheduler.finish_requests("goes_on", RequestStatus.FINISHED_ABORTED)
    assert scheduler.schedule_ahead(so) is None  # nothing left to run ahead


@pytest.mark.parametrize("max_tokens", [3, 4, 9])
def test_prefix_cache_hits_do_not_depend_on_async_scheduling(max_tokens):
    """Prompt 6 + 3 tokens: the last token fed (position 7) completes block 1 in a step that
    ran ahead, and the request ends there (max_tokens): the block must still be cached."""
    hits = []
    for async_scheduling in (False, True):
        scheduler = make_scheduler(100)
        runner = FakeRunner(block_size=4)
        first = Request("a", [1, 2, 3, 4, 5, 6], SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        scheduler.add_request(first)
        run_to_completion(scheduler, runner, async_scheduling)
        scheduler.add_request(Request("b", first.all_token_ids + [7], SamplingParams(max_tokens=1)))
        hits.append(scheduler.schedule().num_cached_tokens["b"])
    assert hits[0] == hits[1] == (6 + max_tokens - 1) // 4 * 4


def test_schedule_ahead_runs_on_while_waiting_requests_have_no_seat():
    scheduler = make_scheduler(100, max_seqs=1)
    runner = FakeRunner(block_size=4)
    so, _ = _launched_step(scheduler, runner, [[1, 2, 3], [4, 5, 6]])
    assert [r.request_id for r in so.requests] == ["r0"] and scheduler.num_waiting == 1
    ahead = scheduler.schedule_ahead(so)
    assert ahead is not None and [r.request_id for r in ahead.requests] == ["r0"]


def test_blocks_filled_by_an_in_flight_token_are_cached_once_it_is_known():
    scheduler = make_scheduler(100)
    runner = FakeRunner(block_size=4)
    first = Request("a", [1, 2, 3, 4, 5, 6], SamplingParams(max_tokens=9, ignore_eos=True))
    scheduler.add_request(first)
    run_to_completion(scheduler, runner, async_scheduling=True)
    assert runner.num_ahead > 0
    # 15 tokens: the first 3 blocks are full, two of them completed by a token sampled ahead.
    second = Request("b", first.all_token_ids + [7], SamplingParams(max_tokens=2, ignore_eos=True))
    scheduler.add_request(second)
    so = scheduler.schedule()
    assert so.num_cached_tokens == {"b": 12}
    scheduler.update_from_output(so, runner.execute_model(so))
    run_to_completion(scheduler, runner, async_scheduling=True)
    assert second.output_token_ids == expected_output(first.all_token_ids + [7], 2)
