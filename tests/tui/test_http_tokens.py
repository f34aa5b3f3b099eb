"""`localllm chat --url` counts prompt tokens through the server's /tokenize: against our own
server (in this process, on the scripted engine and on SmolLM2) the overflow warning is the
engine backend's; a server without /tokenize (or none at all) gives None, once, quietly."""

from __future__ import annotations

import socket

import pytest

from localllm.tui.conversation import ASSISTANT, USER, Conversation, Message
from localllm.tui.engine_backend import EngineBackend
from localllm.tui.http_backend import HttpBackend
from localllm.tui.overflow import check_context
from localllm.tui.screens.dialogs import ChoiceDialog
from localllm.tui.settings import ChatSettings
from localllm.tui.store import ChatStore
from tests.server.conftest import ServerThread, fake_server  # noqa: F401 - fake_server is a fixture
from tests.tui.conftest import SIZE, ready, send, until
from tests.tui.test_http_backend import FakeOpenAI

USER_HI = [{"role": "user", "content": "Say hello"}]


def loaded(url: str) -> HttpBackend:
    backend = HttpBackend(url)
    backend.load(lambda step: None)
    return backend


def test_count_is_the_servers_and_asked_once_per_chat(fake_server):  # noqa: F811
    server = fake_server(max_model_len=300)
    backend = HttpBackend(server.url)
    info = backend.load(lambda step: None)
    assert info.max_model_len == 300  # from /v1/models: the overflow check runs with --url
    count = backend.count_tokens(USER_HI)
    assert count == 4  # "<user> Say hello <assistant>", one token a word
    assert [backend.count_tokens(USER_HI) for _ in range(5)] == [4] * 5
    assert len(server.engine.rendered) == 1  # the repeats never reached the server
    longer = USER_HI + [{"role": "assistant", "content": "Hi there"}, {"role": "user", "content": "More"}]
    assert backend.count_tokens(longer) == 9 and len(server.engine.rendered) == 2
    backend.shutdown()


def test_a_server_without_tokenize_gives_none_and_is_not_asked_again():
    fake = FakeOpenAI()  # answers 404 to every POST but the chat's, as Ollama does
    try:
        backend = loaded(fake.url)
        assert backend.count_tokens(USER_HI) is None
        assert backend.count_tokens(USER_HI + [{"role": "user", "content": "again"}]) is None
        assert fake.other_posts == ["/tokenize"] and fake.bodies == []
        backend.shutdown()
    finally:
        fake.close()


def test_an_unreachable_server_gives_none_without_retrying_each_time():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = HttpBackend(f"http://127.0.0.1:{port}")
    assert backend.count_tokens(USER_HI) is None
    assert backend.count_tokens(USER_HI + [{"role": "user", "content": "again"}]) is None
    assert backend.token_counter.num_requests == 1


async def test_overflow_with_url_asks_and_dropping_turns_sends_the_rest(make_app, fake_server):  # noqa: F811
    twenty_words = ["a"] + [" a"] * 19
    server = fake_server(max_model_len=70, reply=lambda prompt, params: twenty_words)
    app = make_app(HttpBackend(server.url), settings=ChatSettings(max_tokens=20))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.info.max_model_len == 70
        await send(pilot, "first question here")
        await send(pilot, "second question here")
        app.chat_screen.prompt.load_text("third question here")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ChoiceDialog), what="the overflow dialog")
        # 55 = the server's own count of the chat plus the new message
        assert app.screen.body.startswith("This turn needs 55 prompt tokens + up to 20 for the answer = 75, "
                                          "more than the context length 70.")
        assert "dropping the oldest 1 turn" in app.screen.body
        assert len(server.engine.added) == 2  # nothing was sent
        await pilot.press("d")
        await until(pilot, lambda: len(server.engine.added) == 3 and app.chat_screen.answering is None,
                    what="the answer")
    assert server.engine.added[-1].prompt.startswith("<user> second question here")


# ---------------------------------------------------------------- the real model, both backends


def long_chat() -> Conversation:
    messages = []
    for i in range(5):
        messages += [Message(USER, f"Tell me about topic number {i}."),
                     Message(ASSISTANT, " ".join(f"point{j}" for j in range(60)))]
    # NOTE: a saved chat keeps its own settings: max_tokens here is what the dialog reckons with
    return Conversation(title="long", model="smollm2", messages=messages, settings=ChatSettings(max_tokens=400))


@pytest.fixture
def smollm2_server(smollm2_engine):
    """The session's SmolLM2 AsyncLLM behind our real server, in this process."""
    from localllm.server import ModelInfo, create_app

    llm = smollm2_engine[0]
    app = create_app(llm, ModelInfo(name="smollm2", max_model_len=llm.max_model_len, chat_template=llm.chat_template))
    thread = ServerThread(app).start()
    yield llm, thread.url
    thread.stop()


@pytest.mark.slow
async def test_the_warning_with_url_is_the_engine_backends(make_app, data_dir, smollm2_server):
    llm, url = smollm2_server
    engine, http = EngineBackend("smollm2", llm=llm), loaded(url)
    chat, text, max_model_len = long_chat(), "And one more?", 1024
    by_engine = check_context(engine.count_tokens, chat, text, max_model_len)
    by_server = check_context(http.count_tokens, chat, text, max_model_len)
    assert by_engine is not None and by_engine.num_turns_to_drop
    assert by_server == by_engine

    store = ChatStore(data_dir)
    chat_id = store.create(long_chat())
    store.close()
    bodies = []
    for backend in (EngineBackend("smollm2", llm=llm), HttpBackend(url)):
        app = make_app(backend, settings=ChatSettings(max_tokens=400), open_chat=chat_id)
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            assert app.info.max_model_len == max_model_len
            app.chat_screen.prompt.load_text(text)
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, ChoiceDialog), what="the overflow dialog")
            bodies.append(app.screen.body)
            await pilot.press("escape")
            await pilot.pause()
            assert app.chat_screen.prompt.text == text and app.chat_screen.answering is None
    assert bodies[0] == bodies[1] == by_engine.explain()
