"""Typed contracts between layers.

Scheduler -> runner: SchedulerOutput. Runner -> scheduler: ModelRunnerOutput.
Engine -> front ends: RequestOutput (vLLM's shape: .prompt, .outputs[i].text, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from localllm.engine.request import Request


# ---------------------------------------------------------------- scheduler <-> runner


@dataclass
class SchedulerOutput:
    """One step's batch. Row i feeds `num_scheduled_tokens[i]` tokens of `requests[i]`,
    starting at position `num_computed_tokens[i]`, into the blocks `block_ids[i]`.

    NOTE: in a step scheduled ahead (async scheduling, `Scheduler.schedule_ahead`) a row's one
    token is the token the step before it is still sampling: known on the device, not yet in
    `requests[i].all_token_ids`, and `requests[i].num_computed_tokens` lags by that step."""

    requests: list["Request"]
    num_scheduled_tokens: list[int]
    block_ids: list[list[int]]
    num_computed_tokens: list[int]
    total_num_scheduled_tokens: int
    # Requests preempted or finished since the last step: the runner drops any state of theirs.
    preempted_req_ids: set[str] = field(default_factory=set)
    finished_req_ids: set[str] = field(default_factory=set)
    # Prompt tokens served from the prefix cache for requests scheduled for the first time.
    num_cached_tokens: dict[str, int] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0


@dataclass
class TokenLogprobs:
    """Logprobs at one position: the chosen token first, then the top-k alternatives."""

    token_ids: list[int]
    logprobs: list[float]
    ranks: list[int]  # 1-based rank of each token in the full distribution


@dataclass
class ModelRunnerOutput:
    """Row i of a step's batch (SchedulerOutput order). A row that only prefilled part of its
    prompt samples nothing: its token is None."""

    req_ids: list[str]
    sampled_token_ids: list[int | None]
    logprobs: list[TokenLogprobs | None]
    # Per request that asked for them: logprobs of the prompt positions this step computed.
    prompt_logprobs: dict[str, list[TokenLogprobs | None]] = field(default_factory=dict)


# ---------------------------------------------------------------- engine -> front ends


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


SampleLogprobs = list[dict[int, Logprob]]
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: SampleLogprobs | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | None while running
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    prompt_logprobs: PromptLogprobs | None = None
    num_cached_tokens: int = 0
    metrics: RequestMetrics | None = None

    def __repr__(self) -> str:
        texts = [o.text for o in self.outputs]
        return (
            f"RequestOutput(request_id={self.request_id!r}, prompt={self.prompt!r}, "
            f"outputs={texts!r}, finished={self.finished})"
        )
