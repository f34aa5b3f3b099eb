"""Snapshots of the main screens at 80x24 (pytest-textual-snapshot; the SVGs live in
__snapshots__/ beside this file: `pytest tests/tui --snapshot-update` rewrites them after a
deliberate change, and a reviewer looks at the diff)."""

from __future__ import annotations

import threading

import pytest

from localllm.tui.backend import LoadStep, ModelInfo
from localllm.tui.conversation import ASSISTANT, USER, Conversation, Message
from localllm.hub.progress import PullProgress
from localllm.tui.engine_backend import EngineBackend, pull_step
from localllm.tui.settings import ChatSettings
from localllm.tui.store import ChatStore
from tests.tui.conftest import SIZE, until
from tests.tui.fakes import FakeAsyncLLM

ANSWER = """Use a list comprehension:

```python
squares = [n * n for n in range(10)]
print(squares)
```

It is **shorter** than a `for` loop and runs a little faster."""


class StillClock:
    """time.monotonic that does not move: the load panel's seconds stay at 0.0."""

    @staticmethod
    def monotonic() -> float:
        return 1000.0


class StaticBackend(EngineBackend):
    """Loads at once with fixed facts, or waits forever mid-load (`hold`), or fails (`error`)."""

    def __init__(self, hold: bool = False, error: str | None = None, steps=(LoadStep("load weights", 120, 273),),
                 **fake_options) -> None:
        super().__init__("smollm2", llm=FakeAsyncLLM(**fake_options))
        self.hold = hold
        self.error = error
        self.steps = steps
        self.release = threading.Event()

    def load(self, progress):
        for step in self.steps:
            progress(step)
        if self.hold:
            self.release.wait(30)
        if self.error:
            raise RuntimeError(self.error)
        return ModelInfo("smollm2", "int4 (Q4_1)", self.llm.max_model_len)

    def kv_cache_usage(self):
        return (12, 512)

    def shutdown(self) -> None:
        self.release.set()  # a held load ends with the app


@pytest.fixture(autouse=True)
def still_clock(monkeypatch):
    import localllm.tui.widgets.load_panel as load_panel

    monkeypatch.setattr(load_panel, "time", StillClock)


def saved_chat(data_dir) -> int:
    store = ChatStore(data_dir)
    store.create(Conversation(title="Rust or Go for a CLI?", model="smollm2", messages=[
        Message(USER, "Rust or Go for a CLI?"), Message(ASSISTANT, "Either works.")]))
    chat_id = store.create(Conversation(title="Squares in Python", model="smollm2", messages=[
        Message(USER, "How do I get the squares of 0..9 in Python?"),
        Message(ASSISTANT, ANSWER, {"num_generated_tokens": 41, "tokens_per_second": 33.8, "ttft": 0.21,
                                    "num_prompt_tokens": 38, "num_cached_tokens": 32, "finish_reason": "stop"}),
    ]))
    store.close()
    return chat_id


def app_for(make_app, backend, **options):
    return make_app(backend, settings=ChatSettings(), **options)


async def settle(pilot):
    app = pilot.app
    await until(pilot, lambda: app.info is not None or app.load_error is not None or
                app.chat_screen.query_one("#load-step").render(), what="the first load step")
    await pilot.pause(0.1)


def test_loading(snap_compare, make_app):
    backend = StaticBackend(hold=True)
    app = app_for(make_app, backend)

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press(*"Hello")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_downloading(snap_compare, make_app):
    """A model pulled on first use: the whole download on the bar, a line per file under way."""
    total = 1_500_000_000
    events = [
        PullProgress("download", "config.json", 700, 700, 0.0, 700, total, 0.0, finished=True),
        PullProgress("download", "model-00001-of-00002.safetensors", 400_000_000, 1_000_000_000, 21_300_000,
                     400_000_700, total, 0.0),
        PullProgress("download", "model-00002-of-00002.safetensors", 150_000_000, 499_999_300, 20_100_000,
                     550_000_700, total, 41_400_000),
    ]
    backend = StaticBackend(hold=True, steps=[pull_step("qwen3-0.6b", e) for e in events])

    async def run_before(pilot):
        await settle(pilot)
        await pilot.pause(0.1)

    assert snap_compare(app_for(make_app, backend), terminal_size=SIZE, run_before=run_before)


def test_load_failed(snap_compare, make_app):
    app = app_for(make_app, StaticBackend(error="model 'nosuch' not found: fetch it with `hf download ...`"))
    assert snap_compare(app, terminal_size=SIZE, run_before=settle)


def test_conversation(snap_compare, make_app, data_dir):
    chat_id = saved_chat(data_dir)
    app = app_for(make_app, StaticBackend(), open_chat=chat_id)
    assert snap_compare(app, terminal_size=SIZE, run_before=settle)


def test_chat_list(snap_compare, make_app, data_dir):
    chat_id = saved_chat(data_dir)
    app = app_for(make_app, StaticBackend(), open_chat=chat_id)

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("ctrl+b")
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_help(snap_compare, make_app):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f1")
        await pilot.pause(0.1)

    assert snap_compare(app_for(make_app, StaticBackend()), terminal_size=SIZE, run_before=run_before)


def test_settings(snap_compare, make_app):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f2")
        await pilot.pause(0.1)

    assert snap_compare(app_for(make_app, StaticBackend(), system="You are a helpful assistant."),
                        terminal_size=SIZE, run_before=run_before)


def test_context_overflow(snap_compare, make_app, data_dir):
    chat_id = saved_chat(data_dir)
    app = make_app(StaticBackend(max_model_len=540), open_chat=chat_id)

    async def run_before(pilot):
        await settle(pilot)
        pilot.app.chat_screen.prompt.load_text("And the cubes?")
        await pilot.press("enter")
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
