"""Errors in each API's own shape.

Handlers raise APIError; the app renders it as OpenAI's `{"error": {"message", "type", "param",
"code"}}` under /v1 (and everything that is not Ollama's) or as Ollama's `{"error": "..."}` under
/api. Pydantic's validation errors become one readable 400 line naming the parameter.
"""

from __future__ import annotations

from typing import Any

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def is_ollama_path(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def openai_error_body(error: APIError) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def ollama_error_body(error: APIError) -> dict[str, Any]:
    return {"error": error.message}


def error_body(path: str, error: APIError) -> dict[str, Any]:
    return ollama_error_body(error) if is_ollama_path(path) else openai_error_body(error)


def _param_name(loc: tuple) -> str | None:
    """('body', 'messages', 0, 'content') -> 'messages[0].content'."""
    parts = [p for p in loc if p != "body"]
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        elif not isinstance(part, str) or part.startswith(("function-", "union[", "list[", "dict[")) or part in (
            "str", "int", "float", "bool", "list", "dict", "literal",
        ):
            continue  # pydantic's union-branch labels
        else:
            name += f".{part}" if name else part
    return name or None


def validation_error(errors: list[dict]) -> APIError:
    """The first pydantic error as one 400 line, OpenAI's wording where OpenAI has one."""
    if not errors:
        return bad_request("invalid request")
    error = errors[0]
    kind = error.get("type", "")
    loc = tuple(error.get("loc", ()))
    param = _param_name(loc)
    if kind == "json_invalid":
        detail = (error.get("ctx") or {}).get("error", "")
        return bad_request(f"could not parse the JSON body of the request: {detail}".rstrip(": "))
    if kind == "extra_forbidden":
        return bad_request(f"Unrecognized request argument supplied: {param}", param=param)
    if kind == "missing" and param is None:
        return bad_request("the request body is missing (expected a JSON object)")
    if kind == "missing":
        return bad_request(f"missing required parameter: '{param}'", param=param)
    if kind in ("model_attributes_type", "dict_type") and param is None:
        return bad_request("the request body must be a JSON object")
    message = error.get("msg", "invalid value")
    message = message.removeprefix("Value error, ")
    return bad_request(f"{param}: {message}" if param else message, param=param)


def as_api_error(error: Exception) -> APIError:
    """An exception met while generating, as the error to report (in-band once streaming)."""
    if isinstance(error, APIError):
        return error
    if type(error).__name__ == "EngineDeadError":
        return APIError(503, f"the engine is not running: {error}")
    return APIError(500, f"generation failed: {type(error).__name__}: {error}")
