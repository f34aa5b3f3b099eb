"""vLLM's POST /tokenize and POST /detokenize (at the root, as vLLM serves them).

/tokenize renders messages through the chat route's own path (chat_prompt.py, with the same
tools handling) and tokenizes as the engine does, so `count` is the `prompt_tokens` that
/v1/chat/completions would report for the same messages. Clients (the chat's --url mode) use it
to warn before a prompt overflows the context.
"""

from __future__ import annotations

from localllm.server.chat_prompt import render_chat_prompt
from localllm.server.errors import bad_request
from localllm.server.openai_chat import plain_message, tool_plan
from localllm.server.openai_protocol import DetokenizeRequest, TokenizeRequest
from localllm.server.state import ServerState


def _check_model(state: ServerState, model: str | None) -> None:
    if model is not None:  # NOTE: vLLM lets these routes leave the model out
        state.check_model(model)


def _prompt_text(state: ServerState, body: TokenizeRequest) -> str:
    if body.prompt is not None:
        return body.prompt
    messages = [plain_message(m, i) for i, m in enumerate(body.messages)]
    plan = tool_plan(state, body.tools, None)
    add_generation_prompt = body.add_generation_prompt
    if add_generation_prompt is None:
        add_generation_prompt = not body.continue_final_message  # vLLM's default: True
    return render_chat_prompt(state.llm, messages, plan, body.chat_template_kwargs,
                              add_generation_prompt=add_generation_prompt,
                              continue_final_message=body.continue_final_message)


def _token_ids(state: ServerState, text: str, add_special_tokens: bool) -> list[int]:
    tokenizer = state.llm.get_tokenizer()
    if tokenizer is None:
        raise bad_request("this model has no tokenizer")
    if add_special_tokens:
        return state.tokenize(text)  # the engine's: the same ids a generation route runs
    return list(tokenizer.encode(text, add_special_tokens=False))


def _token_strs(tokenizer, ids: list[int]) -> list[str]:
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    return list(convert(ids)) if convert is not None else [tokenizer.decode([i]) for i in ids]


def tokenize(state: ServerState, body: TokenizeRequest) -> dict:
    _check_model(state, body.model)
    ids = _token_ids(state, _prompt_text(state, body), body.add_special_tokens)
    return {
        "count": len(ids),
        "max_model_len": state.model.max_model_len,
        "tokens": ids,
        "token_strs": _token_strs(state.llm.get_tokenizer(), ids) if body.return_token_strs else None,
    }


def detokenize(state: ServerState, body: DetokenizeRequest) -> dict:
    _check_model(state, body.model)
    vocab = state.vocab_size
    bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise bad_request(f"tokens: {bad} is not a token id of this model (ids are in [0, {vocab}))", param="tokens")
    tokenizer = state.llm.get_tokenizer()
    if tokenizer is None:
        raise bad_request("this model has no tokenizer")
    # NOTE: special tokens are kept, as vLLM's /detokenize keeps them: tokenize -> detokenize
    # gives the rendered prompt back.
    return {"prompt": tokenizer.decode(body.tokens, skip_special_tokens=False)}
