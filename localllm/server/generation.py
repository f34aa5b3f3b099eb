"""One engine request as the routes see it: prepared prompt + params in, DELTA outputs out, with
the metrics recorded on the way. Leaving the stream early (a client that hung up) aborts the
request in the engine, which frees its KV blocks at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator

from localllm.outputs import RequestOutput
from localllm.sampling_params import SamplingParams
from localllm.server.state import ServerState


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class EngineRequest:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams


async def stream_outputs(state: ServerState, request: EngineRequest) -> AsyncIterator[RequestOutput]:
    metrics = state.metrics
    start = time.monotonic()
    first = last = None
    finish_reason = "abort"
    prompt = {"prompt": request.prompt, "prompt_token_ids": request.prompt_token_ids}
    try:
        async with aclosing(state.llm.generate(prompt, request.params, request.request_id)) as outputs:
            async for output in outputs:
                now = time.monotonic()
                num_new = sum(len(c.token_ids) for c in output.outputs)
                if num_new:
                    if first is None:
                        first = now
                        metrics.time_to_first_token.observe(now - start)
                        metrics.prompt_tokens.inc(len(request.prompt_token_ids))
                    else:
                        metrics.inter_token_latency.observe(now - last)
                    last = now
                    metrics.generation_tokens.inc(num_new)
                if output.finished:
                    reasons = [c.finish_reason for c in output.outputs if c.finish_reason]
                    finish_reason = reasons[-1] if reasons else "stop"
                yield output
    except Exception:
        finish_reason = "error"
        raise
    finally:
        # NOTE: synchronous only: this also runs while the stream is being cancelled.
        metrics.requests.labels(finish_reason).inc()
        metrics.e2e_latency.observe(time.monotonic() - start)


async def merge_streams(state: ServerState, requests: list[EngineRequest]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Outputs of several engine requests as they come, tagged with the prompt index."""
    if len(requests) == 1:
        async for output in stream_outputs(state, requests[0]):
            yield 0, output
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(p: int, request: EngineRequest) -> None:
        try:
            async for output in stream_outputs(state, request):
                queue.put_nowait((p, output))
        except Exception as error:  # noqa: BLE001 - re-raised by the reader
            queue.put_nowait(error)
        finally:
            queue.put_nowait(done)

    tasks = [asyncio.ensure_future(pump(p, r)) for p, r in enumerate(requests)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()  # NOTE: cancelling a pump aborts its engine request
