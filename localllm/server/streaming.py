"""Streaming bodies (SSE, NDJSON) that always clean up, and disconnect watching for the rest.

NOTE: when a client hangs up, Starlette cancels the task writing the stream. EventStream then
closes the body iterator (shielded from that cancellation), whose `finally` aborts the engine
request, and runs `on_close` (the admission ticket), even if the body never started.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse

SSE_MEDIA_TYPE = "text/event-stream"
NDJSON_MEDIA_TYPE = "application/x-ndjson"


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def sse(obj: Any) -> str:
    return f"data: {dumps(obj)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def ndjson(obj: Any) -> str:
    return dumps(obj) + "\n"


class EventStream(StreamingResponse):
    def __init__(self, body, media_type: str, on_close: Callable[[], None] | None = None) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(body, media_type=media_type, headers=headers)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
                if self._on_close is not None:
                    self._on_close()


class ClientDisconnected(Exception):
    pass


async def until_disconnected(request: Request, work: Awaitable):
    """Await `work`; if the client disconnects first, cancel it (its engine request is aborted)
    and raise ClientDisconnected."""
    task = asyncio.ensure_future(work)

    async def wait_for_disconnect() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(wait_for_disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        raise ClientDisconnected()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


async def collect_unless_disconnected(request: Request, work: Awaitable, release: Callable[[], None]):
    """The non-streamed answer: `work`'s result, or None when the client hung up first (the
    caller answers 499). `release` (the admission ticket's) runs either way."""
    try:
        return await until_disconnected(request, work)
    except ClientDisconnected:
        return None
    finally:
        release()
