"""Ollama's answers: NDJSON pieces then a final object with the statistics in nanoseconds, or
one JSON object; shared by /api/chat and /api/generate (ollama_generate.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localllm.server.collect import collect
from localllm.server.errors import as_api_error, ollama_error_body
from localllm.server.generation import EngineRequest, stream_outputs
from localllm.server.logprobs import ollama_logprobs
from localllm.server.state import ServerState
from localllm.server.streaming import NDJSON_MEDIA_TYPE, EventStream, collect_unless_disconnected, ndjson
from localllm.server.tool_calls import ToolCall, ToolCallStreamer, ToolPlan


def created_at() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Timing:
    """Ollama's statistics, in nanoseconds."""

    start: int
    engine_start: int = 0
    first_token: int = 0
    end: int = 0
    model_load: int = 0  # the model's load time, charged to the first answer (ServerState.take_model_load_ns)

    def stats(self, num_prompt: int, num_generated: int) -> dict:
        first = self.first_token or self.end
        # NOTE: as in Ollama, load_duration is the time before the model could take the request
        # (here: reading and tokenizing it), plus the model's load for the request that paid for
        # it; total_duration includes it.
        load = max(0, self.engine_start - self.start) + self.model_load
        return {
            "total_duration": self.end - self.start + self.model_load,
            "load_duration": load,
            "prompt_eval_count": num_prompt,
            "prompt_eval_duration": first - self.engine_start,
            "eval_count": num_generated,
            "eval_duration": self.end - first,
        }


def _tool_call_dicts(calls: list[ToolCall]) -> list[dict]:
    return [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def _done_reason(finish_reason: str | None) -> str:
    return "length" if finish_reason == "length" else "stop"


class Shape:
    """What differs between /api/chat and /api/generate: where the text goes."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat = chat
        self.model = model

    def piece(self, text: str, tool_calls: list[ToolCall] | None = None) -> dict:
        out = {"model": self.model, "created_at": created_at()}
        if self.chat:
            message = {"role": "assistant", "content": text}
            if tool_calls:
                message["tool_calls"] = _tool_call_dicts(tool_calls)
            out["message"] = message
        else:
            out["response"] = text
        out["done"] = False
        return out


async def _stream(
    state: ServerState, shape: Shape, request: EngineRequest, plan: ToolPlan | None, timing: Timing,
    k: int | None, final_extra: Callable[[list[int]], dict],
) -> AsyncIterator[str]:
    streamer = ToolCallStreamer(plan) if plan is not None else None
    token_ids: list[int] = []
    finish = None
    timing.engine_start = time.perf_counter_ns()
    try:
        async for output in stream_outputs(state, request):
            for completion in output.outputs:
                if completion.token_ids and not timing.first_token:
                    timing.first_token = time.perf_counter_ns()
                token_ids.extend(completion.token_ids)
                text = streamer.feed(completion.text) if streamer is not None else completion.text
                calls = None
                if completion.finish_reason is not None:
                    finish = completion.finish_reason
                    if streamer is not None:
                        rest, calls = streamer.finish()
                        text += rest
                piece = shape.piece(text, calls)
                if k is not None and completion.logprobs:
                    piece["logprobs"] = ollama_logprobs(completion.logprobs, k)
                if text or calls or "logprobs" in piece:
                    yield ndjson(piece)
        timing.end = time.perf_counter_ns()
        timing.model_load = state.take_model_load_ns()
        final = {**shape.piece(""), "done": True, "done_reason": _done_reason(finish)}
        final.update(timing.stats(len(request.prompt_token_ids), len(token_ids)))
        final.update(final_extra(token_ids))
        yield ndjson(final)
    except Exception as error:  # noqa: BLE001 - the stream has started: report in-band
        yield ndjson(ollama_error_body(as_api_error(error)))


async def respond(
    state: ServerState, http_request: Request, stream: bool, shape: Shape, request: EngineRequest,
    plan: ToolPlan | None, timing: Timing, k: int | None, final_extra: Callable[[list[int]], dict],
) -> Response:
    ticket = state.admission.acquire(1)
    if stream:
        body = _stream(state, shape, request, plan, timing, k, final_extra)
        return EventStream(body, NDJSON_MEDIA_TYPE, on_close=ticket.release)
    timing.engine_start = time.perf_counter_ns()
    result = await collect_unless_disconnected(http_request, collect(state, request), ticket.release)
    if result is None:
        return Response(status_code=499)
    timing.end = time.perf_counter_ns()
    timing.model_load = state.take_model_load_ns()
    if result.first_token is not None:
        timing.first_token = timing.end - int((result.end - result.first_token) * 1e9)
    choice = result.choices[0]
    text, calls = choice.text, None
    if plan is not None:
        streamer = ToolCallStreamer(plan)
        shown = streamer.feed(text)
        rest, calls = streamer.finish()
        text = shown + rest
    out = {**shape.piece(text, calls), "done": True, "done_reason": _done_reason(choice.finish_reason)}
    out.update(timing.stats(result.num_prompt_tokens, len(choice.token_ids)))
    if k is not None:
        out["logprobs"] = ollama_logprobs(choice.logprobs, k)
    out.update(final_extra(choice.token_ids))
    return JSONResponse(out)


def empty_answer(state: ServerState, shape: Shape, reason: str, timing: Timing, num_prompt: int = 0) -> JSONResponse:
    """Ollama's answers that run no generation: "load" (no prompt) and num_predict 0."""
    timing.end = timing.engine_start = time.perf_counter_ns()
    out = {**shape.piece(""), "done": True, "done_reason": reason}
    if reason != "load":
        timing.model_load = state.take_model_load_ns()
        out.update(timing.stats(num_prompt, 0))
    return JSONResponse(out)
