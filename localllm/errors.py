"""User-facing errors. Each carries one clear line of text; front ends print it (CLI: stderr,
exit 1) or map it to a status (HTTP 400/404) instead of a traceback."""

from __future__ import annotations


class LocalLLMError(Exception):
    """Base class: str(error) is the one line shown to the user."""


class ModelNotFoundError(LocalLLMError):
    def __init__(self, name: str, hint: str = "") -> None:
        self.name = name
        super().__init__(f"model {name!r} not found" + (f": {hint}" if hint else ""))


class UnsupportedModelError(LocalLLMError):
    def __init__(self, path: str, architecture: str, supported: list[str]) -> None:
        self.architecture = architecture
        super().__init__(
            f"{path}: architecture {architecture!r} is not supported (supported: {', '.join(sorted(supported))})"
        )


class ModelLoadError(LocalLLMError):
    """A model file that is missing, truncated or malformed: names the file and the problem."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class PromptTooLongError(LocalLLMError):
    def __init__(self, num_prompt_tokens: int, max_model_len: int, max_tokens: int | None = None) -> None:
        self.num_prompt_tokens = num_prompt_tokens
        self.max_model_len = max_model_len
        if max_tokens:
            msg = (
                f"prompt has {num_prompt_tokens} tokens and max_tokens is {max_tokens}: together "
                f"{num_prompt_tokens + max_tokens} > max_model_len {max_model_len}"
            )
        else:
            msg = f"prompt has {num_prompt_tokens} tokens, more than max_model_len {max_model_len} allows"
        super().__init__(msg)
