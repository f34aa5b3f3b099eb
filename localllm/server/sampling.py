"""Request fields -> SamplingParams, and the context-length check every endpoint shares."""

from __future__ import annotations

from localllm.sampling_params import RequestOutputKind, SamplingParams
from localllm.server.errors import APIError, bad_request


def context_error(num_prompt: int, max_tokens: int | None, limit: int, param: str) -> APIError:
    if max_tokens is None:
        message = (
            f"This model's maximum context length is {limit} tokens. However, the prompt has {num_prompt} "
            f"tokens, which leaves no room for the completion. Please reduce the length of the prompt."
        )
    else:
        message = (
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{num_prompt + max_tokens} tokens ({num_prompt} in the prompt, {max_tokens} in the completion). "
            f"Please reduce the length of the prompt or the completion."
        )
    return APIError(400, message, param=param, code="context_length_exceeded")


def fit_max_tokens(num_prompt: int, max_tokens: int | None, limit: int, param: str = "max_tokens") -> int:
    """The max_tokens to run with: as asked if prompt + max_tokens fits the context, the rest of
    the context when not given. NOTE: never truncates the prompt; too long is a 400 with the
    numbers."""
    if max_tokens is None:
        if num_prompt >= limit:
            raise context_error(num_prompt, None, limit, param)
        return limit - num_prompt
    if num_prompt + max_tokens > limit:
        raise context_error(num_prompt, max_tokens, limit, param)
    return max_tokens


def make_params(names: dict[str, str] | None = None, **fields) -> SamplingParams:
    """SamplingParams with DELTA outputs; its ValueError becomes a 400 naming the API's field
    (`names` maps SamplingParams' names to the API's, e.g. repetition_penalty -> repeat_penalty)."""
    fields = {k: v for k, v in fields.items() if v is not None}
    try:
        return SamplingParams(output_kind=RequestOutputKind.DELTA, **fields)
    except ValueError as e:
        message = str(e)
        field = message.split(" ", 1)[0]
        api_name = (names or {}).get(field, field)
        if api_name != field:
            message = api_name + message[len(field):]
        raise bad_request(message, param=api_name if field in fields else None) from None
