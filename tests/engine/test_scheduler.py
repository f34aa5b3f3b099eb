import random

import pytest

from localllm.config import CacheConfig, SchedulerConfig
from localllm.engine.request import Request, RequestStatus
from localllm.engine.scheduler import Scheduler
from localllm.sampling_params import SamplingParams
from tests.engine.fake_runner import FakeRunner, next_token


def expected_output(prompt, max_tokens):
    tokens = list(prompt)
    out = []
    for _ in range(max_tokens):
        t = next_token(tokens)
        tokens.append(t)
        out.append(t)
    return out


def run_to_completion(scheduler, runner, max_steps=10_000):
    for _ in range(max_steps):
        if not scheduler.has_unfinished_requests():
            return
        so = scheduler.schedule()
        assert so.total_num_scheduled_tokens <= scheduler.config.max_num_batched_tokens
        assert len(scheduler.running) <= scheduler.config.max_num_seqs
        ro = runner.execute_model(so)
        scheduler.update_from_output(so, ro)
    raise AssertionError("scheduler did not finish")


def make_scheduler(num_blocks, block_size=4, budget=64, max_seqs=16, caching=True, max_len=4096):
    return Scheduler(
        SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget, max_model_len=max_len),
        CacheConfig(block_size=block_size, enable_prefix_caching=caching),
        num_blocks,
    )


def requests_for(prompts, max_tokens):
    return [Request(f"r{i}", p, SamplingParams(max_tokens=m, ignore_eos=True)) for i, (p, m) in enumerate(zip(prompts, max_tokens))]


@pytest.mark.parametrize(
    "num_blocks,budget,max_seqs,caching",
    [
        (400, 512, 32, True),  # roomy: one prefill step each, then batched decode
        (400, 7, 32, True),  # chunked prefill under a tiny budget
        (24, 64, 32, True),  # preemption by recompute
        (24, 5, 3, False),  # everything at once, no caching
    ],
)
def test_outputs_do_not_depend_on_batching(num_blocks, budget, max_seqs, caching):
    rng = random.Random(0)
    shared = [rng.randrange(1000) for _ in range(9)]
    prompts = [shared + [rng.randrange(1000) for _ in range(rng.randrange(1, 30))] for _ in range(18)]
    max_tokens = [rng.randrange(1, 20) for _ in prompts]
    scheduler = make_scheduler(num_blocks, budget=budget, max_seqs=max_seqs, caching=caching)
    runner = FakeRunner(block_size=4)
    requests = requests_for(prompts, max_tokens)
    for r in requests:
        scheduler.add_request(r)
    run_to_completion(scheduler, runner)
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


def test_stops_on_eos_stop_token_and_model_len():
    scheduler = make_scheduler(100, max_len=10)
    runner = FakeRunner(block_size=4)
    prompt = [1, 2, 3]
    first = expected_output(prompt, 3)
    eos = Request("eos", prompt, SamplingParams(max_tokens=50), eos_token_ids=frozenset({first[1]}))
    stop = Request("stop", prompt, SamplingParams(max_tokens=50, stop_token_ids=[first[2]]))
    long = Request("long", prompt, SamplingParams(max_tokens=50, ignore_eos=True))
    for r in (eos, stop, long):
        scheduler.add_request(r)
    run_to_completion(scheduler, runner)
    assert eos.output_token_ids == first[:2] and eos.status == RequestStatus.FINISHED_STOPPED
    assert stop.output_token_ids == first and stop.stop_reason == first[2]
    assert long.num_tokens == 10 and long.status == RequestStatus.FINISHED_LENGTH


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
