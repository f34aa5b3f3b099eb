"""Reading streamed bodies the way a strict client would."""

from __future__ import annotations

import json


def sse_events(text: str) -> list:
    """Parse an SSE body into its data payloads (JSON objects, or the string "[DONE]"); fails on
    anything that is not a well-formed `data:` event."""
    assert text.endswith("\n\n"), f"stream does not end with a blank line: {text[-80:]!r}"
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), f"not a data event: {block!r}"
        payload = block[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def ndjson_lines(text: str) -> list[dict]:
    assert text.endswith("\n"), f"NDJSON does not end with a newline: {text[-80:]!r}"
    return [json.loads(line) for line in text.splitlines()]


def assert_openai_error(response, status: int, *, param: str | None = None, code: str | None = None, contains: str = ""):
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    assert contains in error["message"], error
    return error


def assert_ollama_error(response, status: int, contains: str = "") -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    assert contains in body["error"], body
    return body["error"]
