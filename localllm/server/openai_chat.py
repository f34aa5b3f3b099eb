"""POST /v1/chat/completions."""

from __future__ import annotations

import json
import time
from typing import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localllm.server.chat_prompt import render_chat_prompt
from localllm.server.collect import Collected, collect
from localllm.server.errors import as_api_error, bad_request, openai_error_body
from localllm.server.generation import EngineRequest, new_request_id, stream_outputs
from localllm.server.logprobs import chat_logprobs
from localllm.server.openai_protocol import ChatCompletionRequest, ChatMessage, Tool, ToolChoice
from localllm.server.sampling import fit_max_tokens, make_params
from localllm.server.state import ServerState
from localllm.server.streaming import SSE_DONE, SSE_MEDIA_TYPE, EventStream, collect_unless_disconnected, sse
from localllm.server.structured import from_openai
from localllm.server.tool_call_deltas import ToolCallDeltas
from localllm.server.tool_calls import ToolCall, ToolCallStreamer, ToolPlan, ToolSpec, detect_tool_format


def plain_message(message: ChatMessage, i: int) -> dict:
    param = f"messages[{i}].content"
    content = message.content
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.type not in ("text", "input_text"):
                raise bad_request(f"{param}: {part.type!r} parts are not supported: this model reads text only", param)
            texts.append(part.text or "")
        content = "\n".join(texts)
    if content is None and message.role != "assistant":
        raise bad_request(f"{param} is required for role {message.role!r}", param)
    if message.role == "assistant" and content is None and not message.tool_calls:
        raise bad_request(f"{param}: an assistant message needs content or tool_calls", param)
    plain = {"role": "system" if message.role == "developer" else message.role, "content": content}
    if message.tool_calls:
        calls = []
        for j, call in enumerate(message.tool_calls):
            try:
                arguments = json.loads(call.function.arguments or "{}")
            except json.JSONDecodeError:
                arguments = None
            if not isinstance(arguments, dict):
                raise bad_request(
                    f"messages[{i}].tool_calls[{j}].function.arguments must be a JSON object (as a string)",
                    f"messages[{i}].tool_calls",
                )
            calls.append({"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}})
        plain["tool_calls"] = calls
    if message.tool_call_id is not None:
        plain["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        plain["name"] = message.name
    return plain


def tool_plan(state: ServerState, tools: list[Tool] | None, choice: ToolChoice | None) -> ToolPlan | None:
    """How `tools` go into the prompt and the calls come back (None: no tools); /tokenize too."""
    if not tools or choice == "none":
        return None
    specs = tuple(
        ToolSpec(t.function.name, t.function.description, t.function.parameters or {"type": "object", "properties": {}})
        for t in tools
    )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise bad_request("tools: function names must be unique", param="tools")
    forced = None if choice in (None, "auto") else "" if choice == "required" else choice.function.name
    if forced and forced not in names:
        raise bad_request(f"tool_choice names {forced!r}, which is not among the tools", param="tool_choice")
    fmt, renders = detect_tool_format(state.model.chat_template)
    return ToolPlan(specs, fmt, renders, forced)


def prepare(state: ServerState, body: ChatCompletionRequest) -> tuple[EngineRequest, ToolPlan | None]:
    state.check_model(body.model)
    messages = [plain_message(m, i) for i, m in enumerate(body.messages)]
    plan = tool_plan(state, body.tools, body.tool_choice)
    structured = from_openai(body.response_format, plan)
    prompt = render_chat_prompt(state.llm, messages, plan, body.chat_template_kwargs)
    ids = state.tokenize(prompt)
    max_tokens = fit_max_tokens(len(ids), body.requested_max_tokens, state.model.max_model_len, "messages")
    params = make_params(
        **body.sampling_fields(), max_tokens=max_tokens,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        structured_outputs=structured,
    )
    return EngineRequest(new_request_id("chatcmpl"), prompt, ids, params), plan


def _tool_call_dicts(calls: list[ToolCall]) -> list[dict]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}} for c in calls]


def _tool_finish_reason(plan: ToolPlan) -> str:
    # NOTE: OpenAI (and vLLM) answer a call forced by name with "stop"; "required" and calls the
    # model chose itself end with "tool_calls".
    return "stop" if plan.forced else "tool_calls"


def _usage(num_prompt: int, num_generated: int, num_cached: int) -> dict:
    return {
        "prompt_tokens": num_prompt,
        "completion_tokens": num_generated,
        "total_tokens": num_prompt + num_generated,
        "prompt_tokens_details": {"cached_tokens": num_cached},
    }


def _response(body: ChatCompletionRequest, plan: ToolPlan | None, result: Collected, created: int) -> dict:
    choices = []
    for choice in result.choices:
        message = {"role": "assistant", "content": choice.text}
        finish = choice.finish_reason
        if plan is not None:
            streamer = ToolCallStreamer(plan)
            shown = streamer.feed(choice.text)
            rest, calls = streamer.finish()
            if calls:
                message = {"role": "assistant", "content": shown.strip() or None, "tool_calls": _tool_call_dicts(calls)}
                finish = _tool_finish_reason(plan)
        logprobs = chat_logprobs(choice.logprobs, body.top_logprobs or 0) if body.logprobs else None
        choices.append({"index": choice.index, "message": message, "logprobs": logprobs, "finish_reason": finish})
    return {
        "id": result.request.request_id,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": choices,
        "usage": _usage(result.num_prompt_tokens, result.num_generated_tokens, result.num_cached_tokens),
        "system_fingerprint": None,
    }


async def _stream(
    state: ServerState, body: ChatCompletionRequest, request: EngineRequest, plan: ToolPlan | None, created: int
) -> AsyncIterator[str]:
    options = body.stream_options
    include_usage = bool(options and (options.include_usage or options.continuous_usage_stats))
    continuous = bool(options and options.continuous_usage_stats)
    base = {"id": request.request_id, "object": "chat.completion.chunk", "created": created, "model": body.model}
    num_prompt, num_generated, num_cached = len(request.prompt_token_ids), 0, 0

    def chunk(choices: list[dict]) -> str:
        data = {**base, "choices": choices}
        if include_usage:
            data["usage"] = _usage(num_prompt, num_generated, num_cached) if continuous else None
        return sse(data)

    streamers = [ToolCallDeltas(ToolCallStreamer(plan)) if plan is not None else None for _ in range(request.params.n)]
    for i in range(request.params.n):
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
    try:
        async for output in stream_outputs(state, request):
            num_cached = output.num_cached_tokens
            for completion in output.outputs:
                num_generated += len(completion.token_ids)
                streamer = streamers[completion.index]
                text, tool_deltas = streamer.feed(completion.text) if streamer is not None else (completion.text, [])
                finish = completion.finish_reason
                if finish is not None and streamer is not None:
                    rest, last_deltas, parsed = streamer.finish()
                    text += rest
                    tool_deltas += last_deltas
                    if parsed or (streamer.opened and finish != "length"):
                        finish = _tool_finish_reason(plan)
                delta: dict = {"content": text} if text else {}
                if tool_deltas:
                    delta["tool_calls"] = tool_deltas
                logprobs = None
                if body.logprobs and completion.logprobs:
                    logprobs = chat_logprobs(completion.logprobs, body.top_logprobs or 0)
                if delta or logprobs or finish:
                    yield chunk([{"index": completion.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}])
        if include_usage:
            yield sse({**base, "choices": [], "usage": _usage(num_prompt, num_generated, num_cached)})
    except Exception as error:  # noqa: BLE001 - the stream has started: report in-band
        yield sse(openai_error_body(as_api_error(error)))
    yield SSE_DONE


async def create_chat_completion(state: ServerState, body: ChatCompletionRequest, http_request: Request) -> Response:
    request, plan = prepare(state, body)
    ticket = state.admission.acquire(request.params.n)
    created = int(time.time())
    if body.stream:
        return EventStream(_stream(state, body, request, plan, created), SSE_MEDIA_TYPE, on_close=ticket.release)
    result = await collect_unless_disconnected(http_request, collect(state, request), ticket.release)
    if result is None:
        return Response(status_code=499)
    return JSONResponse(_response(body, plan, result, created))
