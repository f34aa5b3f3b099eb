"""SchedulerOutput -> the step's host-side lists: token rows, positions, slots, sampling rows.

Pure Python, no device. A row whose token is still being sampled by the step in flight (async
scheduling, see `Scheduler.schedule_ahead`) gets a 0 here and is listed in `in_flight_rows`,
with the row of the in-flight step's sampled tokens that holds its token in `in_flight_sources`;
the runner fills those rows on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from localllm.engine.request import Request
from localllm.outputs import SchedulerOutput


@dataclass
class StepInputs:
    input_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    slot_mapping: list[int] = field(default_factory=list)
    query_start_loc: list[int] = field(default_factory=lambda: [0])
    seq_lens: list[int] = field(default_factory=list)
    sample_rows: list[int] = field(default_factory=list)  # flat token index of each sampling row
    sample_requests: list[Request] = field(default_factory=list)
    prompt_rows: list[int] = field(default_factory=list)
    prompt_targets: list[int] = field(default_factory=list)
    prompt_spans: list[tuple[Request, int, int]] = field(default_factory=list)  # request, first row, count
    in_flight_rows: list[int] = field(default_factory=list)
    in_flight_sources: list[int] = field(default_factory=list)


def build_step_inputs(scheduler_output: SchedulerOutput, block_size: int,
                      in_flight_sample_rows: dict[str, int]) -> StepInputs:
    """`in_flight_sample_rows`: request id -> its row in the sampled tokens of the step in
    flight (empty when none is). Marks the prompt logprobs it schedules as done."""
    bs = block_size
    out = StepInputs()
    for request, start, num_new, block_ids in zip(scheduler_output.requests, scheduler_output.num_computed_tokens,
                                                  scheduler_output.num_scheduled_tokens, scheduler_output.block_ids):
        end = start + num_new
        base = len(out.input_ids)
        known = request.all_token_ids[start:end]
        out.input_ids.extend(known)
        if len(known) < num_new:
            # NOTE: only the last token can be in flight: a step ahead schedules one token.
            if len(known) != num_new - 1 or request.request_id not in in_flight_sample_rows:
                raise RuntimeError(f"request {request.request_id!r}: tokens {start}..{end} scheduled, "
                                   f"{request.num_tokens} known and none in flight")
            out.in_flight_rows.append(len(out.input_ids))
            out.in_flight_sources.append(in_flight_sample_rows[request.request_id])
            out.input_ids.append(0)
        out.positions.extend(range(start, end))
        out.slot_mapping.extend(block_ids[p // bs] * bs + p % bs for p in range(start, end))
        out.query_start_loc.append(base + num_new)
        out.seq_lens.append(end)
        if end >= request.num_tokens:
            out.sample_rows.append(base + num_new - 1)
            out.sample_requests.append(request)
        if request.sampling_params.prompt_logprobs is not None:
            # Row p predicts prompt token p + 1; rows already reported are skipped.
            first = max(start, request.num_prompt_logprobs_done)
            last = min(end, request.num_prompt_tokens - 1)
            if first < last:
                out.prompt_spans.append((request, len(out.prompt_rows), last - first))
                out.prompt_rows.extend(base + p - start for p in range(first, last))
                out.prompt_targets.extend(request.prompt_token_ids[first + 1 : last + 1])
                request.num_prompt_logprobs_done = last
    return out
