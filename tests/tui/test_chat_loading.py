"""While the model loads: a message sent meanwhile still gets the context-overflow check, and a
model pulled from the Hub shows its download byte by byte (against tests/hub/fake_hub.py)."""

from __future__ import annotations

import threading

from localllm.tui.backend import ModelInfo
from localllm.tui.conversation import ASSISTANT, USER, Conversation, Message
from localllm.tui.engine_backend import EngineBackend, _find_or_pull
from localllm.tui.screens.dialogs import ChoiceDialog
from localllm.tui.settings import ChatSettings
from localllm.tui.store import ChatStore
from localllm.tui.widgets.load_panel import LoadPanel
from tests.hub.conftest import home, hub  # noqa: F401  (fixtures)
from tests.hub.fake_hub import Fault
from tests.tui.conftest import SIZE, roles, screen_text, until
from tests.tui.fakes import BlockingBackend, FakeAsyncLLM


def _chat_near_the_limit(data_dir) -> int:
    store = ChatStore(data_dir)
    chat_id = store.create(Conversation(title="near the limit", model="smollm2", settings=ChatSettings(max_tokens=10),
                                        messages=[
        Message(USER, "first question here"), Message(ASSISTANT, "a " * 20),
        Message(USER, "second question here"), Message(ASSISTANT, "b " * 20)]))
    store.close()
    return chat_id


async def _send_while_loading(pilot, text: str) -> None:
    app = pilot.app
    await until(pilot, lambda: "load weights" in screen_text(app), what="the load step")
    app.chat_screen.prompt.load_text(text)
    await pilot.press("enter")
    await pilot.pause()
    assert app.chat_screen.waiting_for_model and app.chat_screen.conversation.messages[-1].content == text


async def test_a_message_sent_while_loading_that_would_overflow_asks_first(make_app, data_dir):
    fake = FakeAsyncLLM([["fits now"]], max_model_len=60)  # the same figures as the overflow tests
    backend = BlockingBackend(fake)
    app = make_app(backend, open_chat=_chat_near_the_limit(data_dir))
    async with app.run_test(size=SIZE) as pilot:
        await _send_while_loading(pilot, "third question here")
        backend.release.set()
        await until(pilot, lambda: isinstance(app.screen, ChoiceDialog), what="the overflow dialog")
        await pilot.pause(0.1)
        assert "more than the context length 60" in screen_text(app)
        assert fake.prompts == []  # nothing went to the model
        assert roles(app) == [USER, ASSISTANT, USER, ASSISTANT]  # the message is taken back out...
        assert app.chat_screen.prompt.text == "third question here"  # ...into the prompt box
        await pilot.press("d")
        await until(pilot, lambda: roles(app) == [USER, ASSISTANT, USER, ASSISTANT], what="the answer")
        await until(pilot, lambda: app.chat_screen.answering is None, what="the answer to end")
        assert app.chat_screen.prompt.text == ""
    assert [m.content for m in app.chat_screen.conversation.messages] == [
        "second question here", "b " * 20, "third question here", "fits now"]
    assert fake.messages[-1][0] == {"role": "user", "content": "second question here"}
    stored = ChatStore(data_dir).load(app.chat_screen.conversation.id)
    assert [m.content for m in stored.messages] == ["second question here", "b " * 20, "third question here",
                                                    "fits now"]


async def test_cancelling_the_overflow_after_loading_keeps_the_text_and_sends_nothing(make_app, data_dir):
    fake = FakeAsyncLLM(max_model_len=60)
    backend = BlockingBackend(fake)
    chat_id = _chat_near_the_limit(data_dir)
    app = make_app(backend, open_chat=chat_id)
    async with app.run_test(size=SIZE) as pilot:
        await _send_while_loading(pilot, "third question here")
        backend.release.set()
        await until(pilot, lambda: isinstance(app.screen, ChoiceDialog), what="the overflow dialog")
        await pilot.pause(0.1)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ChoiceDialog) and fake.prompts == []
        assert app.chat_screen.prompt.text == "third question here"
        assert len(ChatStore(data_dir).load(chat_id).messages) == 4


async def test_a_message_sent_while_loading_that_fits_is_answered_once_loaded(make_app, data_dir):
    fake = FakeAsyncLLM([["short answer"]], max_model_len=200)
    backend = BlockingBackend(fake)
    app = make_app(backend, open_chat=_chat_near_the_limit(data_dir))
    async with app.run_test(size=SIZE) as pilot:
        await _send_while_loading(pilot, "third question here")
        backend.release.set()
        await until(pilot, lambda: roles(app)[-1] == ASSISTANT and app.chat_screen.answering is None
                    and len(roles(app)) == 6, what="the answer")
        assert not isinstance(app.screen, ChoiceDialog) and len(fake.prompts) == 1


async def test_a_waiting_message_cleared_before_the_model_loads_is_not_answered(make_app):
    fake = FakeAsyncLLM()
    backend = BlockingBackend(fake)
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await _send_while_loading(pilot, "never mind")
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert app.chat_screen.conversation.messages == []
        backend.release.set()
        await until(pilot, lambda: app.info is not None, what="the model")
        await pilot.pause(0.2)
        assert fake.prompts == [] and app.chat_screen.answering is None and app.is_running


# ---------------------------------------------------------------- download progress


class PullingBackend(EngineBackend):
    """Pulls its model from the stand-in Hub the way EngineBackend does, then waits for `release`."""

    def __init__(self, model: str) -> None:
        super().__init__(model, llm=FakeAsyncLLM())
        self.release = threading.Event()
        self.steps = []
        self.path: str | None = None

    def load(self, progress):
        def seen(step):
            self.steps.append(step)
            progress(step)

        self.path = _find_or_pull(self.model, "cpu", seen)
        assert self.release.wait(30)
        return ModelInfo(self.model, "gguf", 2048)


async def test_the_load_panel_shows_the_download_byte_by_byte(make_app, hub):  # noqa: F811
    data = b"GGUF" + bytes(range(256)) * 4000  # about 1 MB
    hub.add_repo("org/Tiny-GGUF", {"Tiny-Q8_0.gguf": data, "README.md": b"#"})
    hub.faults["Tiny-Q8_0.gguf"] = Fault(delay=2.0)  # the transfer is under way for two seconds
    name = "hf.co/org/Tiny-GGUF:Q8_0"
    backend = PullingBackend(name)
    app = make_app(backend, model_label=name)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "Tiny-Q8_0.gguf  0 B / 1.0 MB" in screen_text(app), what="the file's line")
        assert f"download {name}: 0 B / 1.0 MB" in screen_text(app)
        await until(pilot, lambda: backend.path is not None, what="the pull")
        await pilot.pause(0.1)
        panel = app.chat_screen.query_one(LoadPanel)
        assert f"download {name}" in panel.steps and not panel.files
        assert "Tiny-Q8_0.gguf  " not in screen_text(app)  # finished files leave the list
        backend.release.set()
        await until(pilot, lambda: app.info is not None, what="the model")
    downloads = [s for s in backend.steps if s.pull is not None]
    assert downloads[-1].pull.finished and downloads[-1].done == downloads[-1].total == len(data)
    assert [s.done for s in downloads] == sorted(s.done for s in downloads)
    assert backend.path.endswith("Tiny-Q8_0.gguf")

