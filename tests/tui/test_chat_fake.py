"""The chat app on a scripted fake engine: streaming, Esc, regenerate, edit, errors, loading,
saved chats, context overflow, settings, copying, keys."""

from __future__ import annotations

import asyncio

from localllm.sampling_params import RequestOutputKind
from localllm.tui.app import LATEST
from localllm.tui.conversation import ASSISTANT, ERROR, USER
from localllm.tui.screens.dialogs import ChoiceDialog, TextDialog
from localllm.tui.screens.help import KEYS, HelpScreen
from localllm.tui.screens.settings import SettingsScreen
from localllm.tui.settings import ChatSettings
from localllm.tui.store import ChatStore
from localllm.tui.widgets.chat_list import ChatList
from localllm.tui.widgets.message import MessageView
from localllm.tui.widgets.prompt import PromptArea
from tests.tui.conftest import SIZE, ready, roles, screen_text, send, until
from tests.tui.fakes import BlockingBackend, FakeAsyncLLM


def stored(app, chat_id=None):
    """The chat as the store has it (a fresh connection: the app closes its own on exit)."""
    return ChatStore(app.store.path.parent).load(chat_id or app.chat_screen.conversation.id)


def shown(app) -> list[str]:
    """The messages on screen, as their text."""
    return [view.message.content for view in app.chat_screen.query(MessageView)]


def answers(app) -> list[str]:
    return [m.content for m in app.chat_screen.conversation.messages if m.role == ASSISTANT]


# ---------------------------------------------------------------- streaming


async def test_answer_streams_onto_the_screen_piece_by_piece(make_app):
    gate = asyncio.Event()
    fake = FakeAsyncLLM([["The sky", " is blue", gate, " because of **Rayleigh** scattering."]])
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.chat_screen.prompt.load_text("Why is the sky blue?")
        await pilot.press("enter")
        await until(pilot, lambda: "The sky is blue" in screen_text(app), what="the first pieces")
        assert "Rayleigh" not in screen_text(app)
        assert app.chat_screen.answering is not None
        assert "answering" in screen_text(app)
        gate.set()
        await until(pilot, lambda: app.chat_screen.answering is None, what="the end")
        await pilot.pause()
        text = screen_text(app)
        assert "because of Rayleigh scattering." in text  # Markdown rendered: no asterisks
        assert "Why is the sky blue?" in text
        assert app.chat_screen.prompt.text == ""
    assert answers(app) == ["The sky is blue because of **Rayleigh** scattering."]
    params = fake.params[0]
    assert params.output_kind is RequestOutputKind.DELTA and params.max_tokens == 16


async def test_each_turn_sends_the_whole_conversation_through_the_template(make_app):
    fake = FakeAsyncLLM([["Paris."], ["About 2 million."]], num_cached_tokens=7)
    app = make_app(fake, system="Be brief.")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Capital of France?")
        await send(pilot, "Population?")
        assert "cached 7" in screen_text(app)
    assert fake.messages[-1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Population?"},
    ]
    meta = app.chat_screen.conversation.messages[-1].meta
    assert meta["num_cached_tokens"] == 7 and meta["finish_reason"] == "stop"
    assert meta["num_prompt_tokens"] == len(fake.prompts[-1].split()) + 1


async def test_shift_enter_and_ctrl_j_start_a_new_line(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("a", "shift+enter", "b", "ctrl+j", "c")
        assert app.chat_screen.prompt.text == "a\nb\nc"
        assert app.chat_screen.conversation.messages == []


# ---------------------------------------------------------------- stop, regenerate, edit


async def test_escape_stops_the_answer_and_aborts_the_request(make_app):
    gate = asyncio.Event()
    fake = FakeAsyncLLM([["Counting: 1, 2,", gate, " 3"], ["Fine."]])
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.chat_screen.prompt.load_text("Count to 100")
        await pilot.press("enter")
        await until(pilot, lambda: "Counting: 1, 2," in screen_text(app), what="the first piece")
        request_id = app.chat_screen.answering
        await pilot.press("escape")
        await until(pilot, lambda: app.chat_screen.answering is None, timeout=2, what="the stop")
        await pilot.pause()
        assert fake.aborted == [request_id]
        assert not fake.running
        assert "stopped" in screen_text(app)
        await send(pilot, "Never mind.")  # the app goes on
    assert answers(app) == ["Counting: 1, 2,", "Fine."]
    assert app.chat_screen.conversation.messages[1].meta["finish_reason"] == "abort"


async def test_escape_with_nothing_streaming_does_nothing(make_app):
    fake = FakeAsyncLLM()
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("x", "escape")
        assert app.chat_screen.prompt.text == "x"
        assert fake.aborted == []


async def test_regenerate_replaces_the_last_answer(make_app):
    fake = FakeAsyncLLM([["First try."], ["Second try."]])
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Say something.")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: answers(app) == ["Second try."], what="the new answer")
        await pilot.pause()
        assert "First try." not in screen_text(app)
        assert len(app.chat_screen.query(MessageView)) == 2
    assert fake.messages[0] == fake.messages[1] == [{"role": "user", "content": "Say something."}]
    assert [(m.role, m.content) for m in stored(app).messages] == [(USER, "Say something."), (ASSISTANT, "Second try.")]


async def test_up_in_the_empty_box_takes_the_last_prompt_back_to_edit_and_resend(make_app):
    fake = FakeAsyncLLM([["Red."], ["Blue."]])
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Name a colour")
        await pilot.press("up")
        assert app.chat_screen.prompt.text == "Name a colour"
        assert app.chat_screen.conversation.messages == []
        await pilot.press("end", *" please", "enter")
        await until(pilot, lambda: answers(app) == ["Blue."], what="the new answer")
    assert fake.messages[-1] == [{"role": "user", "content": "Name a colour please"}]


# ---------------------------------------------------------------- errors and loading


async def test_an_engine_error_is_a_message_and_the_app_goes_on(make_app):
    fake = FakeAsyncLLM([["Half an answer", RuntimeError("CUDA error: device-side assert")], ["Recovered."]])
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "Go")
        assert roles(app) == [USER, ASSISTANT, ERROR]
        assert "engine error: RuntimeError: CUDA error: device-side assert" in screen_text(app)
        assert "Half an answer" in screen_text(app)
        await send(pilot, "Again")
        assert answers(app)[-1] == "Recovered."
        assert app.is_running
    # The error is shown and stored, never sent to the model.
    assert {"role": "error"} not in [{"role": m["role"]} for m in fake.messages[-1]]


async def test_a_prompt_the_engine_refuses_is_a_message(make_app):
    from localllm.errors import PromptTooLongError

    app = make_app(FakeAsyncLLM([[PromptTooLongError(3000, 2048)]]))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "long")
        assert roles(app) == [USER, ERROR]
        assert "more than max_model_len 2048" in app.chat_screen.conversation.messages[-1].content


async def test_prompt_is_usable_while_the_model_loads_and_the_message_waits(make_app):
    backend = BlockingBackend(FakeAsyncLLM([["Loaded and answering."]]))
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "load weights" in screen_text(app), what="the load step")
        assert app.focused is app.chat_screen.prompt
        await pilot.press(*"hi", "enter")
        await pilot.pause()
        assert roles(app) == [USER] and app.chat_screen.waiting_for_model
        backend.release.set()
        await until(pilot, lambda: answers(app) == ["Loaded and answering."], what="the answer")
        await pilot.pause()
        assert "int4 (Q4_1)" in screen_text(app)


async def test_a_model_that_fails_to_load_is_shown_and_the_app_stays_up(make_app):
    from localllm.errors import ModelNotFoundError

    backend = BlockingBackend(FakeAsyncLLM(), ModelNotFoundError("nosuch", "try `localllm pull`"))
    backend.release.set()
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        text = screen_text(app)
        assert "Could not load smollm2" in text and "model 'nosuch' not found" in text
        await pilot.press(*"hi", "enter")
        await pilot.pause()
        assert app.chat_screen.conversation.messages == [] and app.is_running


# ---------------------------------------------------------------- saved chats


async def test_a_restart_reopens_the_saved_chat(make_app):
    app = make_app(FakeAsyncLLM([["Four."]]), settings=ChatSettings(temperature=0.0, max_tokens=16))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "What is 2+2?")
    again = make_app(FakeAsyncLLM([["Eight."]]), open_chat=LATEST)
    async with again.run_test(size=SIZE) as pilot:
        await ready(pilot)
        text = screen_text(again)
        assert "What is 2+2?" in text and "Four." in text
        await send(pilot, "And 4+4?")
    reopened = ChatStore(again.store.path.parent).load(again.chat_screen.conversation.id)
    assert [m.content for m in reopened.messages] == ["What is 2+2?", "Four.", "And 4+4?", "Eight."]
    assert reopened.title == "What is 2+2?" and reopened.settings.temperature == 0.0


async def test_chat_list_opens_renames_exports_and_deletes(make_app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app(FakeAsyncLLM([["One."], ["Two."]]))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "first chat")
        first_id = app.chat_screen.conversation.id
        await pilot.press("ctrl+n")
        await send(pilot, "second chat")
        await pilot.press("ctrl+b")
        chats = app.chat_screen.query_one(ChatList)
        assert app.focused is chats and chats.option_count == 2
        await pilot.press("down", "enter")  # the older chat
        await pilot.pause()
        assert app.chat_screen.conversation.id == first_id
        assert shown(app) == ["first chat", "One."]
        chats.focus()
        await pilot.press("r")
        assert isinstance(app.screen, TextDialog)
        await pilot.press("ctrl+u", *"renamed", "enter")
        await pilot.pause()
        assert app.store.load(first_id).title == "renamed" and app.chat_screen.conversation.title == "renamed"
        await pilot.press("e")
        await pilot.press("enter")
        await pilot.pause()
        exported = (tmp_path / "renamed.md").read_text()
        assert "# renamed" in exported and "## User\n\nfirst chat" in exported and "## Assistant\n\nOne." in exported
        await pilot.press("d")
        assert isinstance(app.screen, ChoiceDialog)
        await pilot.press("y")
        await pilot.pause()
        assert [c.title for c in app.store.list_chats()] == ["second chat"]
        assert app.chat_screen.conversation.id is None  # the open chat was the deleted one


async def test_clear_and_new_chat(make_app):
    app = make_app(FakeAsyncLLM([["Yes."], ["No."]]))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "one")
        chat_id = app.chat_screen.conversation.id
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert app.chat_screen.conversation.messages == [] and not app.chat_screen.query(MessageView)
        assert app.store.load(chat_id).messages == []
        await send(pilot, "two")
        assert app.chat_screen.conversation.id == chat_id and app.store.load(chat_id).title == "two"
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert app.chat_screen.conversation.id is None and not app.chat_screen.query(MessageView)


# ---------------------------------------------------------------- context overflow


def overflowing_app(make_app, fake):
    # WordTokenizer: one token per word, plus the template's role tags (in render_chat's words).
    return make_app(fake, settings=ChatSettings(max_tokens=10))


async def test_overflow_warns_and_dropping_the_oldest_turns_makes_room(make_app):
    fake = FakeAsyncLLM([["a " * 20], ["b " * 20], ["fits now"]], max_model_len=60)
    app = overflowing_app(make_app, fake)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "first question here")
        await send(pilot, "second question here")
        app.chat_screen.prompt.load_text("third question here")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ChoiceDialog)
        assert "more than the context length 60" in screen_text(app)
        assert len(fake.prompts) == 2  # nothing was sent
        await pilot.press("d")
        await until(pilot, lambda: answers(app) == ["b " * 20, "fits now"], what="the answer")
    assert fake.messages[-1][0] == {"role": "user", "content": "second question here"}
    assert stored(app).messages[0].content == "second question here"


async def test_overflow_can_start_a_new_chat_or_be_cancelled(make_app):
    fake = FakeAsyncLLM([["a " * 50], ["fresh"]], max_model_len=60)
    app = overflowing_app(make_app, fake)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "first")
        old_id = app.chat_screen.conversation.id
        app.chat_screen.prompt.load_text("second")
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("escape")  # cancel: back to editing, nothing lost
        await pilot.pause()
        assert app.chat_screen.prompt.text == "second" and len(fake.prompts) == 1
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("n")
        await until(pilot, lambda: answers(app) == ["fresh"], what="the answer")
        assert app.chat_screen.conversation.id != old_id
        assert len(app.store.load(old_id).messages) == 2


async def test_status_line_warns_when_the_context_is_nearly_full(make_app):
    fake = FakeAsyncLLM([["x " * 50]], max_model_len=60)
    app = make_app(fake, settings=ChatSettings(max_tokens=5))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hi")
        status = app.chat_screen.status
        used = status.facts.context_used
        assert used >= 0.8 * 60 and f"ctx {used}/60" in screen_text(app)
        marked = [str(status.render())[s.start:s.end] for s in status.render().spans if "yellow" in str(s.style)]
        assert marked == [f"ctx {used}/60"]


# ---------------------------------------------------------------- settings, copying, help


async def test_settings_dialog_sets_system_prompt_and_sampling_for_this_chat(make_app):
    fake = FakeAsyncLLM([["ok"]])
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("f2")
        assert isinstance(app.screen, SettingsScreen)
        await pilot.press(*"You are terse.")
        app.screen.query_one("#temperature").value = "-1"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, SettingsScreen)  # refused, with the engine's own message
        assert "temperature must be >= 0" in str(app.screen.query_one("#settings-error").render())
        app.screen.query_one("#temperature").value = "0"
        app.screen.query_one("#seed").value = "42"
        app.screen.query_one("#stop").value = "END|\\n\\n"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not isinstance(app.screen, SettingsScreen)
        await send(pilot, "hi")
    params = fake.params[0]
    assert params.temperature == 0.0 and params.seed == 42 and params.stop == ["END", "\n\n"]
    assert fake.messages[0][0] == {"role": "system", "content": "You are terse."}
    chat = stored(app)
    assert chat.system == "You are terse." and chat.settings.seed == 42


async def test_settings_dialog_refuses_bad_values(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("f2")
        app.screen.query_one("#top_p").value = "1.5"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, SettingsScreen)
        assert "top_p must be in (0, 1]" in str(app.screen.query_one("#settings-error").render())
        app.screen.query_one("#top_p").value = "x"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "top p: 'x' is not a number" in str(app.screen.query_one("#settings-error").render())
        await pilot.press("escape")
        await pilot.pause()
        assert app.chat_screen.conversation.settings.top_p == ChatSettings().top_p


async def test_copy_a_message_and_its_code_blocks(make_app):
    answer = "Two ways:\n\n```python\nprint('a')\n```\n\nor\n\n```sh\necho b\n```\n"
    app = make_app(FakeAsyncLLM([[answer]]))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "show me")
        await pilot.press("shift+tab")  # from the prompt to the last message
        assert isinstance(app.focused, MessageView) and app.focused.message.role == ASSISTANT
        await pilot.press("c")
        assert app.clipboard == answer
        await pilot.press("b")
        assert app.clipboard == "print('a')\n"
        await pilot.press("b")
        assert app.clipboard == "echo b\n"
        await pilot.press("b")
        assert app.clipboard == "print('a')\n"


async def test_help_lists_every_key_the_app_binds(make_app):
    from localllm.tui.app import ChatApp
    from localllm.tui.chat_screen import ChatScreen
    from localllm.tui.widgets.message import MessageView as View

    listed = " ".join(keys for _, keys, _ in KEYS).lower()
    for owner in (ChatApp, ChatScreen, PromptArea, View, ChatList):
        for binding in owner.BINDINGS:
            for key in binding.key.split(","):
                name = {"escape": "esc", "delete": "d"}.get(key, key)
                assert name in listed, f"{owner.__name__} binds {key!r}, not in the help screen"
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        assert "regenerate the last answer" in screen_text(app)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_actions_refuse_while_an_answer_streams(make_app):
    gate = asyncio.Event()
    fake = FakeAsyncLLM([["busy", gate]])
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.chat_screen.prompt.load_text("go")
        await pilot.press("enter")
        await until(pilot, lambda: "busy" in screen_text(app), what="the answer")
        for key in ("ctrl+r", "ctrl+l", "ctrl+n"):
            await pilot.press(key)
        await pilot.press(*"next", "enter")
        await pilot.pause()
        assert roles(app) == [USER] and len(fake.prompts) == 1
        gate.set()
        await until(pilot, lambda: app.chat_screen.answering is None, what="the end")
        assert roles(app) == [USER, ASSISTANT]


async def test_enter_after_a_burst_of_keys_sends_all_of_them(make_app):
    """Keys that arrive together (fast typing, tmux send-keys, a paste without bracketing) are
    all in the message: Enter is handled in the prompt's own queue, after them."""
    from textual import events

    fake = FakeAsyncLLM([["ok"]])
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        text = "Write a Python function that reverses a string."
        for char in text:
            app.post_message(events.Key(char, char))
        app.post_message(events.Key("enter", "\r"))
        await until(pilot, lambda: answers(app) == ["ok"], what="the answer")
    assert app.chat_screen.conversation.messages[0].content == text


async def test_command_palette_runs_chat_actions(make_app):
    fake = FakeAsyncLLM([["First."], ["Second."]])
    app = make_app(fake)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hello")
        await pilot.press("ctrl+p")
        await pilot.press(*"Regenerate")
        await until(pilot, lambda: "Answer the last prompt again" in screen_text(app), what="the command")
        await pilot.press("enter")
        await until(pilot, lambda: answers(app) == ["Second."], what="the new answer")
        await pilot.press("ctrl+p", *"New chat")
        await until(pilot, lambda: "Start an empty chat" in screen_text(app), what="the command")
        await pilot.press("enter")
        await until(pilot, lambda: app.chat_screen.conversation.messages == [], what="the new chat")
