"""Continuous batching with chunked prefill and preemption by recompute (vLLM v1's idea).

Each step spends a token budget (max_num_batched_tokens): running requests first, in arrival
order, each taking min(tokens it still needs, budget left); then waiting requests while the
budget, max_num_seqs and free blocks allow. A request needing more than the budget is
prefilled in chunks over several steps.

When blocks run out, the newest running request is preempted: its blocks are freed and it
goes back to the front of the queue to be recomputed later, from its prompt and the tokens it
already generated, so its answer does not change.
"""

from __future__ import annotations

from collections import deque

from localllm.config import CacheConfig, SchedulerConfig
from localllm.engine.kv_cache_manager import KVCacheManager
from localllm.engine.request import Request, RequestStatus
from localllm.outputs import ModelRunnerOutput, SchedulerOutput


class Scheduler:
    def __init__(self, scheduler_config: SchedulerConfig, cache_config: CacheConfig, num_blocks: int) -> None:
        self.config = scheduler_config
        self.kv_cache_manager = KVCacheManager(num_blocks, cache_config.block_size, cache_config.enable_prefix_caching)
        # NOTE: no sequence may outgrow the whole cache, or it would preempt itself forever.
        self.max_model_len = min(scheduler_config.max_model_len, num_blocks * cache_config.block_size)
        self.requests: dict[str, Request] = {}
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        # Finished or preempted since the last schedule(): reported once to the runner.
        self._finished_ids: set[str] = set()
        self._preempted_ids: set[str] = set()
        self.num_preemptions = 0

    # ------------------------------------------------------------------ requests in and out

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        if request.num_tokens >= self.max_model_len:
            raise ValueError(f"prompt of {request.num_tokens} tokens leaves no room under max_model_len {self.max_model_len}")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish_requests(self, request_ids: str | list[str], status: RequestStatus) -> list[Request]:
        """End requests from outside the step (abort, stop string): blocks are freed at once."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        finished = []
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None or request.is_finished:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove(request)
            self._free_request(request, status)
            finished.append(request)
        return finished

    def _free_request(self, request: Request, status: RequestStatus) -> None:
        request.status = status
        self.kv_cache_manager.free(request)
        self.kv_cache_manager.forget(request)
        self._finished_ids.add(request.request_id)
        del self.requests[request.request_id]

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    # ------------------------------------------------------------------ the step

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        scheduled: list[Request] = []
        num_scheduled: list[int] = []
        num_cached_tokens: dict[str, int] = {}
        preempted_this_step = False

        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            if num_new <= 0:  # NOTE: cannot happen while every scheduled step samples or advances
                index += 1
                continue
            while True:
                if self.kv_cache_manager.allocate_slots(request, num_new) is not None:
                    scheduled.append(request)
                    num_scheduled.append(num_new)
                    budget -= num_new
                    index += 1
                    break
                victim = self.running.pop()
                self._preempt(victim)
                preempted_this_step = True
                if victim is request:
                    break

        # NOTE: no admissions in a step that had to preempt: the pool is short already.
        while self.waiting and budget > 0 and not preempted_this_step and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            computed_blocks, num_hit_tokens = [], 0
            if request.num_computed_tokens == 0:
                computed_blocks, num_hit_tokens = self.kv_cache_manager.get_computed_blocks(request)
            num_new = min(request.num_tokens - num_hit_tokens, budget)
            if self.kv_cache_manager.allocate_slots(request, num_new, computed_blocks) is None:
                break
            self.waiting.popleft()
            request.num_computed_tokens = num_hit_tokens
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit_tokens
                num_cached_tokens[request.request_id] = num_hit_tokens
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            scheduled.append(request)
            num_scheduled.append(num_new)
            budget -= num_new

        return self._output(scheduled, num_scheduled, [r.num_computed_tokens for r in scheduled], num_cached_tokens)

    def schedule_ahead(self, in_flight: SchedulerOutput) -> SchedulerOutput | None:
        """The next step, scheduled while `in_flight` still runs (async scheduling): one token
        for each of its requests, the token `in_flight` is sampling for it, which the runner
        takes from that step's device output. The host prepares this step while the device
        runs the one before.

        None when the next step needs the host to see the in-flight tokens first: a request
        waits and a seat is free for it, a row of `in_flight` samples nothing (a prefill chunk), a
        request's sampling reads its own past tokens (penalties, min_tokens not reached yet,
        structured output), or a block cannot be had without preempting. A request the
        in-flight token surely ends (max_tokens, max_model_len) is left out; one that ends on
        a stop token is found only after this step is launched, which then runs one wasted row.

        NOTE: called only with exactly one step in flight, before its update_from_output:
        `request.num_computed_tokens` and `request.all_token_ids` lag by that step alone.
        """
        if self.waiting and len(self.running) < self.config.max_num_seqs:
            return None  # a seat is free: the next step may admit (a full house waits anyway)
        rows: list[tuple[Request, int]] = []  # request, its position in this step
        for request, start, num_new in zip(in_flight.requests, in_flight.num_computed_tokens,
                                           in_flight.num_scheduled_tokens):
            if request.is_finished:  # aborted or stopped after `in_flight` was launched
                continue
            position = start + num_new
            if position < request.num_tokens or not _samples_from_logits_alone(request):
                return None
            params = request.sampling_params
            ends = request.num_tokens + 1 >= self.max_model_len or (
                params.max_tokens is not None and request.num_output_tokens + 1 >= params.max_tokens)
            if not ends:
                rows.append((request, position))
        if not rows or len(rows) > self.config.max_num_batched_tokens:
            return None
        for request, position in rows:
            # NOTE: on None the blocks already taken for earlier rows stay with their requests,
            # which would take them next step anyway.
            if self.kv_cache_manager.allocate_slots(request, position + 1 - request.num_computed_tokens) is None:
                return None
        return self._output([r for r, _ in rows], [1] * len(rows), [p for _, p in rows], {})

    def _output(self, requests: list[Request], num_scheduled: list[int], num_computed: list[int],
                num_cached_tokens: dict[str, int]) -> SchedulerOutput:
        output = SchedulerOutput(
            requests=requests,
            num_scheduled_tokens=num_scheduled,
            block_ids=[self.kv_cache_manager.get_block_ids(r.request_id) for r in requests],
            num_computed_tokens=num_computed,
            total_num_scheduled_tokens=sum(num_scheduled),
            preempted_req_ids=self._preempted_ids,
            finished_req_ids=self._finished_ids,
            num_cached_tokens=num_cached_tokens,
        )
        self._preempted_ids = set()
        self._finished_ids = set()
        return output

    def _preempt(self, request: Request) -> None:
        self.kv_cache_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self._preempted_ids.add(request.request_id)
        self.waiting.appendleft(request)

    def update_from_output(self, scheduler_output: SchedulerOutput, runner_output: ModelRunnerOutput) -> list[Request]:
        """Advance counters, append sampled tokens, stop finished requests. Returns the
        requests that got a new token this step (finished ones included)."""
        updated: list[Request] = []
        for request, num_new, token in zip(
            scheduler_output.requests, scheduler_output.num_scheduled_tokens, runner_output.sampled_token_ids
        ):
            if request.is_finished:  # aborted while the step ran
                continue
            request.num_computed_tokens += num_new
            if token is None:
                continue
            request.append_output_token(token)
            # A block the step's last input token completed is cached now that every token in
            # it is known (a step scheduled ahead fed that token before the host knew it).
            self.kv_cache_manager.cache_full_blocks(request, request.num_computed_tokens)
            status = self._check_stop(request, token)
            if status is not None:
                self.running.remove(request)
                self._free_request(request, status)
            updated.append(request)
        return updated

    def _check_stop(self, request: Request, token: int) -> RequestStatus | None:
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            if not params.ignore_eos and token in request.eos_token_ids:
                request.stop_reason = None
                return RequestStatus.FINISHED_STOPPED
            if token in params.stop_token_ids:
                request.stop_reason = token
                return RequestStatus.FINISHED_STOPPED
        if params.max_tokens is not None and request.num_output_tokens >= params.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        if request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None


def _samples_from_logits_alone(request: Request) -> bool:
    """True when sampling the request's next token needs nothing but the logits and its
    settings: not the tokens it generated so far, which may still be in flight."""
    params = request.sampling_params
    return not params.penalizes and request.num_output_tokens >= params.min_tokens and params.structured_outputs is None
