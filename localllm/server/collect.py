"""Non-streaming answers: fold a request's DELTA outputs into whole choices, with timings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from localllm.outputs import Logprob
from localllm.server.generation import EngineRequest, stream_outputs
from localllm.server.state import ServerState


@dataclass
class Choice:
    index: int
    parts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass
class Collected:
    request: EngineRequest
    choices: list[Choice]
    num_cached_tokens: int = 0
    prompt_logprobs: list = field(default_factory=list)
    start: float = 0.0  # time.monotonic() when the request went to the engine
    first_token: float | None = None
    end: float = 0.0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.choices)


async def collect(state: ServerState, request: EngineRequest) -> Collected:
    result = Collected(request, [Choice(i) for i in range(request.params.n)], start=time.monotonic())
    async for output in stream_outputs(state, request):
        result.num_cached_tokens = output.num_cached_tokens
        if output.prompt_logprobs:
            result.prompt_logprobs.extend(output.prompt_logprobs)
        for completion in output.outputs:
            choice = result.choices[completion.index]
            if completion.token_ids and result.first_token is None:
                result.first_token = time.monotonic()
            choice.parts.append(completion.text)
            choice.token_ids.extend(completion.token_ids)
            if completion.logprobs:
                choice.logprobs.extend(completion.logprobs)
            if completion.finish_reason is not None:
                choice.finish_reason = completion.finish_reason
    result.end = time.monotonic()
    return result
