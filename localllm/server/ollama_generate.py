"""POST /api/chat and /api/generate: Ollama requests -> prompt and sampling settings; the answer
(NDJSON streaming by default, or one object) is written by ollama_answer.py."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from localllm.server.chat_prompt import render_chat_prompt
from localllm.server.errors import bad_request
from localllm.server.generation import EngineRequest, new_request_id
from localllm.server.ollama_answer import Shape, Timing, empty_answer, respond
from localllm.server.ollama_protocol import ChatRequest, GenerateRequest, Message, Options
from localllm.server.sampling import fit_max_tokens, make_params
from localllm.server.state import ServerState
from localllm.server.structured import from_ollama
from localllm.server.tool_calls import ToolPlan, ToolSpec, detect_tool_format

# Ollama's sampling defaults (the repetition penalty stays off, as in `localllm run`).
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.9
DEFAULT_TOP_K = 40


def _check_common(state: ServerState, body) -> None:
    state.check_model(body.model)
    if body.think:
        raise bad_request(f'"{body.model}" does not support thinking', param="think")


def _params(state: ServerState, body, num_prompt: int, structured):
    o = body.options or Options()
    limit = min(o.num_ctx, state.model.max_model_len) if o.num_ctx else state.model.max_model_len
    # NOTE: num_predict is a cap, as in Ollama: more than the context has room for ends at the
    # context's end (done_reason "length"). A prompt that does not fit is still a 400, never cut.
    max_tokens = fit_max_tokens(num_prompt, None, limit, "options.num_ctx")
    if o.num_predict not in (None, -1, -2):
        max_tokens = min(max_tokens, o.num_predict)
    return make_params(
        names={"repetition_penalty": "repeat_penalty", "max_tokens": "num_predict"},
        max_tokens=max_tokens, stop=o.stop,
        temperature=DEFAULT_TEMPERATURE if o.temperature is None else o.temperature,
        top_p=DEFAULT_TOP_P if o.top_p is None else o.top_p,
        top_k=DEFAULT_TOP_K if o.top_k is None else o.top_k,
        min_p=o.min_p, seed=o.seed, repetition_penalty=o.repeat_penalty,
        presence_penalty=o.presence_penalty, frequency_penalty=o.frequency_penalty,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        structured_outputs=structured,
    )


def _plain_message(message: Message, i: int) -> dict:
    if message.images:
        raise bad_request(f"messages[{i}].images: this model reads text only", param="messages")
    plain = {"role": message.role, "content": message.content or ""}
    if message.tool_calls:
        plain["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_name:
        plain["name"] = message.tool_name
    return plain


def _tool_plan(state: ServerState, body: ChatRequest) -> ToolPlan | None:
    if not body.tools:
        return None
    specs = tuple(
        ToolSpec(t.function.name, t.function.description, t.function.parameters or {"type": "object", "properties": {}})
        for t in body.tools
    )
    fmt, renders = detect_tool_format(state.model.chat_template)
    return ToolPlan(specs, fmt, renders)


async def chat(state: ServerState, body: ChatRequest, http_request: Request) -> Response:
    timing = Timing(time.perf_counter_ns())
    _check_common(state, body)
    shape = Shape(True, body.model)
    if body.messages is None:
        return empty_answer(state, shape, "load", timing)
    messages = [_plain_message(m, i) for i, m in enumerate(body.messages)]
    plan = _tool_plan(state, body)
    structured = from_ollama(body.format)
    prompt = render_chat_prompt(state.llm, messages, plan)
    ids = state.tokenize(prompt)
    if body.options is not None and body.options.num_predict == 0:
        return empty_answer(state, shape, "length", timing, len(ids))
    params = _params(state, body, len(ids), structured)
    request = EngineRequest(new_request_id("chat"), prompt, ids, params)
    k = (body.top_logprobs or 0) if body.logprobs else None
    return await respond(state, http_request, body.stream, shape, request, plan, timing, k, lambda _: {})


def _generate_prompt(state: ServerState, body: GenerateRequest) -> str:
    if body.template:
        raise bad_request("custom templates are not supported: format the prompt yourself and send raw: true", param="template")
    if body.suffix is not None:
        if state.model.fim is None:
            raise bad_request(f'"{body.model}" does not support insert (fill-in-the-middle)', param="suffix")
        return state.model.fim.build(body.prompt or "", body.suffix)
    if body.raw:
        return body.prompt
    messages = ([{"role": "system", "content": body.system}] if body.system is not None else [])
    messages.append({"role": "user", "content": body.prompt})
    if not state.model.chat_template:
        if body.system is not None:
            raise bad_request("this model has no chat template to put a system message in; send raw: true", param="system")
        return body.prompt
    return render_chat_prompt(state.llm, messages, None)


async def generate(state: ServerState, body: GenerateRequest, http_request: Request) -> Response:
    timing = Timing(time.perf_counter_ns())
    _check_common(state, body)
    if body.images:
        raise bad_request("images: this model reads text only", param="images")
    shape = Shape(False, body.model)
    if not body.prompt and body.suffix is None:
        return empty_answer(state, shape, "load", timing)
    prompt = _generate_prompt(state, body)
    ids = state.tokenize(prompt)
    if body.context:
        vocab = state.vocab_size
        if any(t >= vocab for t in body.context):
            raise bad_request(f"context: token ids must be in [0, {vocab})", param="context")
        bos = getattr(state.llm.tokenizer, "bos_token_id", None)
        if bos is not None and ids and ids[0] == bos:
            ids = ids[1:]  # NOTE: the context already starts with BOS
        ids = list(body.context) + ids
    if not ids:
        raise bad_request("the prompt is empty (0 tokens)", param="prompt")
    if body.options is not None and body.options.num_predict == 0:
        return empty_answer(state, shape, "length", timing, len(ids))
    params = _params(state, body, len(ids), from_ollama(body.format))
    request = EngineRequest(new_request_id("generate"), prompt, ids, params)
    k = (body.top_logprobs or 0) if body.logprobs else None

    def with_context(token_ids: list[int]) -> dict:
        return {} if body.raw else {"context": list(ids) + list(token_ids)}

    return await respond(state, http_request, body.stream, shape, request, None, timing, k, with_context)
