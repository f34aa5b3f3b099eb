"""POST /v1/completions: plain prompts (text or token ids, one or a batch), `suffix` for
fill-in-the-middle, `echo` + `logprobs` for scoring prompts (lm-eval's loglikelihood)."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localllm.server.collect import Collected, collect
from localllm.server.errors import as_api_error, bad_request, openai_error_body
from localllm.server.generation import EngineRequest, merge_streams, new_request_id
from localllm.server.logprobs import CompletionLogprobs
from localllm.server.openai_protocol import CompletionRequest
from localllm.server.sampling import fit_max_tokens, make_params
from localllm.server.state import ServerState
from localllm.server.streaming import SSE_DONE, SSE_MEDIA_TYPE, EventStream, collect_unless_disconnected, sse
from localllm.server.structured import from_openai


def _prompts(state: ServerState, body: CompletionRequest) -> list[tuple[str | None, list[int]]]:
    """(text or None, token ids) per prompt."""
    prompt = body.prompt
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise bad_request("prompt must not be empty", param="prompt")
    if isinstance(prompt[0], int):
        prompt = [prompt]
    out = []
    for i, item in enumerate(prompt):
        if isinstance(item, str):
            if body.suffix is not None:
                fim = state.model.fim
                if fim is None:
                    raise bad_request(
                        f"suffix (fill-in-the-middle) needs a model with FIM tokens; {state.model.name} has none",
                        param="suffix",
                    )
                item = fim.build(item, body.suffix)
            ids = state.tokenize(item)
            out.append((item, ids))
        else:
            if body.suffix is not None:
                raise bad_request("suffix needs a text prompt, not token ids", param="suffix")
            vocab = state.vocab_size
            if any(t < 0 or t >= vocab for t in item):
                raise bad_request(f"prompt[{i}]: token ids must be in [0, {vocab})", param="prompt")
            out.append((None, list(item)))
        if not out[-1][1]:
            raise bad_request(f"prompt[{i}] is empty (0 tokens)" if len(prompt) > 1 else "the prompt is empty (0 tokens)", param="prompt")
    return out


def prepare(state: ServerState, body: CompletionRequest) -> list[EngineRequest]:
    state.check_model(body.model)
    structured = from_openai(body.response_format, None)
    base_id = new_request_id("cmpl")
    requests = []
    prompts = _prompts(state, body)
    for i, (text, ids) in enumerate(prompts):
        # NOTE: max_tokens 0 with echo scores the prompt: one token is generated and dropped.
        wanted = None if body.max_tokens is None else max(body.max_tokens, 1)
        max_tokens = fit_max_tokens(len(ids), wanted, state.model.max_model_len, "prompt")
        prompt_logprobs = body.prompt_logprobs
        if body.echo and body.logprobs is not None:
            prompt_logprobs = body.logprobs
        params = make_params(
            **body.sampling_fields(), max_tokens=max_tokens,
            logprobs=body.logprobs, prompt_logprobs=prompt_logprobs, structured_outputs=structured,
        )
        request_id = base_id if len(prompts) == 1 else f"{base_id}-{i}"
        requests.append(EngineRequest(request_id, text, ids, params))
    return requests


class _Echo:
    """The prompt part of an echoed choice: its text and (with logprobs) its positions."""

    def __init__(self, state: ServerState, request: EngineRequest) -> None:
        self.text = request.prompt
        if self.text is None:
            self.text = state.llm.tokenizer.decode(request.prompt_token_ids, skip_special_tokens=False)
        self._state = state
        self._request = request

    def positions(self, prompt_logprobs: list) -> list:
        ids = self._request.prompt_token_ids
        tokenizer = self._state.llm.tokenizer
        out = []
        for pos, token_id in enumerate(ids):
            entry = prompt_logprobs[pos] if pos < len(prompt_logprobs) else None
            text = tokenizer.decode([token_id], skip_special_tokens=False) if entry is None else ""
            out.append((text, entry, token_id))
        return out


def _sample_positions(completion_logprobs, token_ids) -> list:
    return [("", entry, token_id) for entry, token_id in zip(completion_logprobs or [], token_ids)]


def _choice(index: int, text: str, logprobs, finish: str | None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def _score_only(body: CompletionRequest) -> bool:
    return body.max_tokens == 0


def _response(state: ServerState, body: CompletionRequest, results: list[Collected], created: int) -> dict:
    choices = []
    num_prompt = num_generated = num_cached = 0
    for p, result in enumerate(results):
        num_prompt += result.num_prompt_tokens
        num_cached += result.num_cached_tokens
        echo = _Echo(state, result.request) if body.echo else None
        for choice in result.choices:
            text, token_ids, entries = choice.text, choice.token_ids, choice.logprobs
            finish = choice.finish_reason
            if _score_only(body):
                text, token_ids, entries, finish = "", [], [], "length"
            num_generated += len(token_ids)
            logprobs = None
            if body.logprobs is not None:
                positions = echo.positions(result.prompt_logprobs) if echo else []
                logprobs = CompletionLogprobs().build(positions + _sample_positions(entries, token_ids))
            if echo:
                text = echo.text + text
            choices.append(_choice(p * body.n + choice.index, text, logprobs, finish))
    return {
        "id": results[0].request.request_id,
        "object": "text_completion",
        "created": created,
        "model": body.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": num_prompt,
            "completion_tokens": num_generated,
            "total_tokens": num_prompt + num_generated,
            "prompt_tokens_details": {"cached_tokens": num_cached},
        },
        "system_fingerprint": None,
    }


async def _stream(state: ServerState, body: CompletionRequest, requests: list[EngineRequest], created: int) -> AsyncIterator[str]:
    base = {"id": requests[0].request_id, "object": "text_completion", "created": created, "model": body.model}
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    num_prompt = sum(len(r.prompt_token_ids) for r in requests)
    num_generated = num_cached = 0
    echoes = [_Echo(state, r) if body.echo else None for r in requests]
    offsets = {}  # choice index -> CompletionLogprobs (text offsets run on across chunks)
    pending_prompt_logprobs: dict[int, list] = {p: [] for p in range(len(requests))}
    echoed: set[int] = set()

    def chunk(index: int, text: str, logprobs, finish) -> str:
        data = {**base, "choices": [_choice(index, text, logprobs, finish)]}
        if include_usage:
            data["usage"] = None
        return sse(data)

    try:
        async for p, output in merge_streams(state, requests):
            if output.prompt_logprobs:
                pending_prompt_logprobs[p].extend(output.prompt_logprobs)
            for completion in output.outputs:
                index = p * body.n + completion.index
                text, token_ids, entries = completion.text, completion.token_ids, completion.logprobs
                if _score_only(body):
                    text, token_ids, entries = "", [], []
                num_generated += len(token_ids)
                positions = _sample_positions(entries, token_ids)
                if echoes[p] is not None and index not in echoed:
                    echoed.add(index)
                    text = echoes[p].text + text
                    positions = echoes[p].positions(pending_prompt_logprobs[p]) + positions
                logprobs = None
                if body.logprobs is not None:
                    logprobs = offsets.setdefault(index, CompletionLogprobs()).build(positions)
                finish = "length" if _score_only(body) and completion.finish_reason else completion.finish_reason
                if text or finish or (logprobs and logprobs["tokens"]):
                    yield chunk(index, text, logprobs, finish)
            num_cached = max(num_cached, output.num_cached_tokens)
        if include_usage:
            usage = {"prompt_tokens": num_prompt, "completion_tokens": num_generated,
                     "total_tokens": num_prompt + num_generated, "prompt_tokens_details": {"cached_tokens": num_cached}}
            yield sse({**base, "choices": [], "usage": usage})
    except Exception as error:  # noqa: BLE001 - the stream has started: report in-band
        yield sse(openai_error_body(as_api_error(error)))
    yield SSE_DONE


async def create_completion(state: ServerState, body: CompletionRequest, http_request: Request) -> Response:
    requests = prepare(state, body)
    ticket = state.admission.acquire(sum(r.params.n for r in requests))
    created = int(time.time())
    if body.stream:
        return EventStream(_stream(state, body, requests, created), SSE_MEDIA_TYPE, on_close=ticket.release)

    async def run_all() -> list[Collected]:
        tasks = [asyncio.ensure_future(collect(state, r)) for r in requests]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

    results = await collect_unless_disconnected(http_request, run_all(), ticket.release)
    if results is None:
        return Response(status_code=499)
    return JSONResponse(_response(state, body, results, created))
