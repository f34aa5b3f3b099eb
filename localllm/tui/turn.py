"""One answer: stream the backend's deltas into a MessageView as Markdown, and time it.

The figures (tokens, tok/s, time to first token, cached prompt tokens) go into the answer's
meta, which the store keeps and the status line shows.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

from textual.widgets import Markdown

from localllm.tui.backend import ChatBackend
from localllm.tui.settings import ChatSettings
from localllm.tui.widgets.message import MessageView

TEXT_INTERVAL = 0.1  # seconds: the answer's text reaches the screen at most 10 times a second


@dataclass
class TurnStats:
    start: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    last_token: float | None = None
    num_generated_tokens: int = 0
    num_prompt_tokens: int | None = None
    num_cached_tokens: int | None = None
    finish_reason: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def tokens_per_second(self) -> float | None:
        """Decode rate: tokens after the first over the time since the first."""
        if self.first_token is None or self.last_token is None or self.num_generated_tokens < 2:
            return None
        seconds = self.last_token - self.first_token
        return (self.num_generated_tokens - 1) / seconds if seconds > 0 else None

    @property
    def context_used(self) -> int | None:
        if self.num_prompt_tokens is None:
            return None
        return self.num_prompt_tokens + self.num_generated_tokens

    def to_meta(self) -> dict:
        meta = {
            "num_generated_tokens": self.num_generated_tokens,
            "tokens_per_second": self.tokens_per_second,
            "ttft": self.ttft,
            "num_prompt_tokens": self.num_prompt_tokens,
            "num_cached_tokens": self.num_cached_tokens,
            "finish_reason": self.finish_reason,
        }
        return {k: v for k, v in meta.items() if v is not None}


class _TextPump:
    """Hands the answer's text to the Markdown widget every TEXT_INTERVAL, whatever the pace
    of the deltas. NOTE: every write lays the screen out again (a third of a core at one write
    per token), so writes are batched; the text is never more than TEXT_INTERVAL behind."""

    def __init__(self, view: MessageView) -> None:
        self.view = view
        self.unshown = ""
        # Made at the first text, not before: a MarkdownStream stopped before its task ever ran
        # raises CancelledError from stop(), which would hide the error that ended the answer.
        self.stream = None
        self.task: asyncio.Task | None = None

    def add(self, text: str) -> None:
        self.unshown += text
        if self.task is None:
            self.stream = Markdown.get_stream(self.view.body)
            self.task = asyncio.create_task(self._run())

    async def _flush(self) -> None:
        if self.unshown:
            text, self.unshown = self.unshown, ""
            await self.stream.write(text)

    async def _run(self) -> None:
        await self._flush()
        while True:
            await asyncio.sleep(TEXT_INTERVAL)
            await self._flush()

    async def close(self) -> None:
        if self.task is None:
            return
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        await self._flush()
        await self.stream.stop()


async def stream_answer(
    backend: ChatBackend,
    messages: list[dict],
    settings: ChatSettings,
    request_id: str,
    view: MessageView,
    on_update: Callable[[TurnStats], None],
) -> tuple[str, TurnStats]:
    """Returns the answer's text and figures. Backend errors propagate, with the text so far
    left on screen (the caller saves what was said)."""
    stats = TurnStats()
    parts: list[str] = []
    pump = _TextPump(view)
    try:
        async for delta in backend.stream(messages, settings, request_id):
            now = time.perf_counter()
            if delta.num_prompt_tokens is not None:
                stats.num_prompt_tokens = delta.num_prompt_tokens
            if delta.num_cached_tokens is not None:
                stats.num_cached_tokens = delta.num_cached_tokens
            if delta.num_new_tokens or delta.text:
                stats.num_generated_tokens += delta.num_new_tokens
                stats.first_token = stats.first_token or now
                stats.last_token = now
            if delta.finish_reason:
                stats.finish_reason = delta.finish_reason
            if delta.text:
                parts.append(delta.text)
                view.message.content = "".join(parts)
                pump.add(delta.text)
            on_update(stats)
    finally:
        await pump.close()
        view.message.content = "".join(parts)
    return view.message.content, stats
