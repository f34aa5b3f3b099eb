"""A scripted fake engine for CLI tests: same surface as AsyncLLM, no model, no torch."""

from __future__ import annotations

import sys

import pytest

from localllm.errors import LocalLLMError
from localllm.outputs import CompletionOutput, RequestOutput


class FakeEngine:
    def __init__(self, chunks=("Hello", ", ", "world", "!"), chat_template: str | None = "fake-template",
                 generate_error: Exception | None = None, interrupt_after: int | None = None) -> None:
        self.chunks = list(chunks)
        self.chat_template = chat_template
        self.max_model_len = 2048
        self.generate_error = generate_error
        self.interrupt_after = interrupt_after  # raise KeyboardInterrupt after this many chunks
        self.requests: list[tuple[object, object, str]] = []
        self.messages: list[dict] | None = None
        self.aborted: list[str] = []
        self.stdout_seen: list[str] = []  # what stdout held each time the engine was resumed
        self.shut_down = False

    def render_chat(self, messages: list[dict]) -> str:
        self.messages = messages
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    async def generate(self, prompt, params, request_id: str):
        self.requests.append((prompt, params, request_id))
        if self.generate_error is not None:
            raise self.generate_error
        for i, chunk in enumerate(self.chunks):
            if self.interrupt_after is not None and i == self.interrupt_after:
                raise KeyboardInterrupt
            last = i == len(self.chunks) - 1
            yield RequestOutput(
                request_id=request_id,
                prompt=prompt if isinstance(prompt, str) else None,
                prompt_token_ids=[1, 2, 3],
                outputs=[CompletionOutput(index=0, text=chunk, token_ids=[100 + i],
                                          finish_reason="length" if last else None)],
                finished=last,
            )
            self.stdout_seen.append(_stdout_bytes())

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def shutdown(self) -> None:
        self.shut_down = True


def _stdout_bytes() -> str:
    buffer = getattr(sys.stdout, "buffer", None)
    getvalue = getattr(buffer, "getvalue", None)
    return getvalue().decode() if getvalue else ""


@pytest.fixture
def fake_engine(monkeypatch):
    """Install a FakeEngine as the engine `localllm run` builds; returns (engine, calls), where
    calls records the (model, engine kwargs) of each build. Set `engine.load_error` to make the
    build raise instead."""
    import localllm.cli.run as run_module

    engine = FakeEngine()
    engine.load_error = None
    calls: list[tuple[str, dict]] = []

    def make_engine(model: str, **kwargs):
        calls.append((model, kwargs))
        if engine.load_error is not None:
            raise engine.load_error
        return engine

    monkeypatch.setattr(run_module, "_make_engine", make_engine)
    return engine, calls


__all__ = ["FakeEngine", "LocalLLMError"]
