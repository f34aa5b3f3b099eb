"""A running `localllm serve` (or any OpenAI-compatible server): `/v1/models` to load (the
model's name and context length), `/v1/chat/completions` with `stream: true` (server-sent
events) to chat, and vLLM's `/tokenize` to count prompt tokens (token_counter.py) where the
server has it.

Esc cancels the task reading the stream, which closes the connection; the server then aborts
the request in its engine (a dropped connection frees the request's blocks there).
"""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator, Callable

from localllm.tui.backend import BackendError, Delta, LoadStep, ModelInfo
from localllm.tui.settings import ChatSettings
from localllm.tui.token_counter import RemoteTokenCounter

_DONE = object()


class HttpBackend:
    def __init__(self, url: str, model: str | None = None, *, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[: -len("/v1")]
        self.model = model
        self.timeout = timeout
        self._readers: dict[str, asyncio.Task] = {}
        self._queues: dict[str, asyncio.Queue] = {}
        self.token_counter = RemoteTokenCounter(self.url, model)

    # ------------------------------------------------------------------ load

    def load(self, progress: Callable[[LoadStep], None]) -> ModelInfo:
        import httpx

        progress(LoadStep(f"connect to {self.url}"))
        try:
            response = httpx.get(f"{self.url}/v1/models", timeout=10.0)
        except httpx.HTTPError as error:
            raise BackendError(f"cannot reach {self.url}: {error or type(error).__name__}") from error
        if response.status_code != 200:
            raise BackendError(f"{self.url}/v1/models: {_error_message(response.status_code, response.text)}")
        cards = response.json().get("data") or []
        ids = [card.get("id") for card in cards]
        if not cards:
            raise BackendError(f"{self.url} serves no model")
        if self.model is None:
            card = cards[0]
        elif self.model in ids:
            card = cards[ids.index(self.model)]
        else:
            raise BackendError(f"{self.url} does not serve {self.model!r} (it serves: {', '.join(map(str, ids))})")
        self.model = self.token_counter.model = card["id"]
        return ModelInfo(name=self.model, quantization=card.get("quantization"),
                         max_model_len=card.get("max_model_len"))

    # ------------------------------------------------------------------ chat

    def _body(self, messages: list[dict], settings: ChatSettings) -> dict:
        body = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": settings.max_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            # vLLM's extra sampling fields, which `localllm serve` accepts too.
            "top_k": settings.top_k,
            "min_p": settings.min_p,
            "repetition_penalty": settings.repetition_penalty,
        }
        if settings.seed is not None:
            body["seed"] = settings.seed
        if settings.stop:
            body["stop"] = list(settings.stop)
        return body

    async def stream(self, messages: list[dict], settings: ChatSettings, request_id: str) -> AsyncIterator[Delta]:
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = queue
        reader = asyncio.create_task(self._read(self._body(messages, settings), queue))
        self._readers[request_id] = reader
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason == "abort":
                    return
        finally:
            self._queues.pop(request_id, None)
            self._readers.pop(request_id, None)
            if not reader.done():
                reader.cancel()

    async def abort(self, request_id: str) -> None:
        reader = self._readers.get(request_id)
        queue = self._queues.get(request_id)
        if reader is None or queue is None:
            return
        reader.cancel()
        try:
            await reader
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - it is going away
            pass
        queue.put_nowait(Delta("", finish_reason="abort"))

    async def _read(self, body: dict, queue: asyncio.Queue) -> None:
        """Parse the SSE stream into Deltas on `queue`; errors go on the queue too."""
        import httpx

        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout, connect=10.0)) as client:
                async with client.stream("POST", f"{self.url}/v1/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        text = (await response.aread()).decode("utf-8", "replace")
                        raise BackendError(_error_message(response.status_code, text))
                    await self._parse(response, queue)
        except asyncio.CancelledError:
            raise
        except BackendError as error:
            queue.put_nowait(error)
        except httpx.HTTPError as error:
            queue.put_nowait(BackendError(f"{self.url}: {error or type(error).__name__}"))
        except Exception as error:  # noqa: BLE001 - a malformed stream must not kill the app
            queue.put_nowait(BackendError(f"{self.url}: bad response: {error}"))
        queue.put_nowait(_DONE)

    async def _parse(self, response, queue: asyncio.Queue) -> None:
        finish_reason = None
        pending: Delta | None = None  # the finishing delta waits for the usage chunk
        num_sent = 0  # one token per content chunk until the usage chunk gives the true count
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # comments, event names, blank separators
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                error = chunk["error"]
                raise BackendError(error.get("message", str(error)) if isinstance(error, dict) else str(error))
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                finish_reason = choice.get("finish_reason") or finish_reason
                delta = Delta(text, num_new_tokens=1 if text else 0)
                if finish_reason:
                    delta.finish_reason = finish_reason
                    pending = delta
                elif text:
                    queue.put_nowait(delta)
                    num_sent += 1
            usage = chunk.get("usage")
            if usage:
                pending = pending or Delta("", finish_reason=finish_reason or "stop")
                pending.num_prompt_tokens = usage.get("prompt_tokens")
                details = usage.get("prompt_tokens_details") or {}
                pending.num_cached_tokens = details.get("cached_tokens")
                if usage.get("completion_tokens") is not None:
                    pending.num_new_tokens = max(0, usage["completion_tokens"] - num_sent)
        if pending is None:
            pending = Delta("", finish_reason=finish_reason or "stop")
        queue.put_nowait(pending)

    def count_tokens(self, messages: list[dict]) -> int | None:
        """The server's count (POST /tokenize), cached; None where the server cannot count."""
        return self.token_counter.count(messages)

    def kv_cache_usage(self) -> tuple[int, int] | None:
        return None

    def shutdown(self) -> None:
        self.token_counter.close()


def _error_message(status: int, text: str) -> str:
    """The server's own message where the body is OpenAI's error shape, else the status."""
    try:
        error = json.loads(text).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return f"server error {status}: {message}"
    except (ValueError, AttributeError):
        pass
    return f"server error {status}: {text.strip()[:200] or 'no details'}"
