"""A scripted stand-in for AsyncLLM (the surface EngineBackend uses), with no model and no torch;
and BlockingBackend, an EngineBackend on it whose load waits until the test lets it finish.

Each request plays the next script: a list of steps, each a text chunk, an Exception to raise,
or an asyncio.Event to wait on (to hold an answer open mid-stream). A script that runs out
finishes with finish_reason "stop". abort() ends the request the way AsyncLLM does: the
caller still streaming gets a last output with finish_reason "abort".
"""

from __future__ import annotations

import asyncio
import threading

from localllm.outputs import CompletionOutput, RequestOutput
from localllm.tui.backend import LoadStep, ModelInfo
from localllm.tui.engine_backend import EngineBackend


class WordTokenizer:
    """One token per whitespace-separated word (plus one for the template's framing)."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(range(len(text.split()) + (1 if add_special_tokens else 0)))


class FakeAsyncLLM:
    def __init__(self, scripts=None, *, max_model_len: int = 2048, num_cached_tokens: int = 0) -> None:
        self.scripts: list[list] = list(scripts or [])
        self.max_model_len = max_model_len
        self.num_cached_tokens = num_cached_tokens
        self.tokenizer = WordTokenizer()
        self.prompts: list[str] = []
        self.params: list = []
        self.messages: list[list[dict]] = []
        self.aborted: list[str] = []
        self.running: set[str] = set()
        self._abort_events: dict[str, asyncio.Event] = {}

    def get_tokenizer(self):
        return self.tokenizer

    def render_chat(self, messages: list[dict]) -> str:
        self.messages.append([dict(m) for m in messages])
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"

    def stats(self) -> dict:
        return {"kv_blocks_used": 2 * len(self.running), "kv_blocks_total": 64}

    def _output(self, request_id: str, prompt: str, text: str, finish: str | None, index: int) -> RequestOutput:
        return RequestOutput(
            request_id=request_id, prompt=prompt,
            prompt_token_ids=self.tokenizer.encode(prompt),
            outputs=[CompletionOutput(index=0, text=text, token_ids=list(range(max(len(text.split()), 1) if text else 0)),
                                      finish_reason=finish)],
            finished=finish is not None, num_cached_tokens=self.num_cached_tokens,
        )

    async def generate(self, prompt: str, params, request_id: str):
        self.prompts.append(prompt)
        self.params.append(params)
        script = self.scripts.pop(0) if self.scripts else ["Hello", " there", "!"]
        aborted = self._abort_events[request_id] = asyncio.Event()
        self.running.add(request_id)
        try:
            for index, step in enumerate(script):
                if isinstance(step, BaseException):
                    raise step
                if isinstance(step, asyncio.Event):
                    waiter = asyncio.ensure_future(step.wait())
                    abort_waiter = asyncio.ensure_future(aborted.wait())
                    await asyncio.wait({waiter, abort_waiter}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    abort_waiter.cancel()
                    if aborted.is_set():
                        yield self._output(request_id, prompt, "", "abort", index)
                        return
                    continue
                await asyncio.sleep(0)
                if aborted.is_set():
                    yield self._output(request_id, prompt, "", "abort", index)
                    return
                yield self._output(request_id, prompt, step, None, index)
            yield self._output(request_id, prompt, "", "stop", len(script))
        finally:
            self.running.discard(request_id)
            self._abort_events.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        event = self._abort_events.get(request_id)
        if event is not None:
            event.set()

    def shutdown(self) -> None:
        pass


class BlockingBackend(EngineBackend):
    """load() reports `steps`, then waits for `release` (then loads the fake, or raises `error`)."""

    def __init__(self, fake, error: Exception | None = None, steps=(LoadStep("load weights", 3, 10),)) -> None:
        super().__init__("smollm2", llm=fake)
        self.release = threading.Event()
        self.error = error
        self.steps = steps

    def load(self, progress):
        for step in self.steps:
            progress(step)
        assert self.release.wait(30)
        if self.error is not None:
            raise self.error
        return ModelInfo("smollm2", "int4 (Q4_1)", self.llm.max_model_len)
