"""The chat store (SQLite), the conversation model and per-chat settings, without the UI."""

from __future__ import annotations

import sqlite3

import pytest

from localllm.tui.conversation import ASSISTANT, ERROR, USER, Conversation, Message
from localllm.tui.settings import ChatSettings
from localllm.tui.store import DB_NAME, ChatStore, default_data_dir


def test_data_dir_is_localllm_home_when_set(data_dir, monkeypatch):
    assert default_data_dir() == data_dir
    store = ChatStore()
    assert store.path == data_dir / DB_NAME and store.path.exists()
    monkeypatch.delenv("LOCALLLM_HOME")
    assert default_data_dir().name == "localllm"  # platformdirs' user data directory


def test_a_chat_round_trips(tmp_path):
    store = ChatStore(tmp_path)
    settings = ChatSettings(temperature=0.2, top_k=0, seed=7, stop=("\n\n", "END"))
    chat = Conversation(title="Colours", system="Be brief.", settings=settings, model="smollm2",
                        messages=[Message(USER, "Name a colour")])
    chat_id = store.create(chat)
    store.add_message(chat_id, Message(ASSISTANT, "Red.", {"num_generated_tokens": 2, "ttft": 0.1}))
    store.add_message(chat_id, Message(ERROR, "engine error: boom"))
    store.close()

    again = ChatStore(tmp_path).load(chat_id)
    assert (again.title, again.system, again.model, again.settings) == ("Colours", "Be brief.", "smollm2", settings)
    assert [(m.role, m.content) for m in again.messages] == [
        (USER, "Name a colour"), (ASSISTANT, "Red."), (ERROR, "engine error: boom")]
    assert again.messages[1].meta == {"num_generated_tokens": 2, "ttft": 0.1}
    assert again.prompt_messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour"},
        {"role": "assistant", "content": "Red."},
    ]


def test_list_rename_delete_and_messages(tmp_path):
    store = ChatStore(tmp_path)
    first = store.create(Conversation(title="one", messages=[Message(USER, "a"), Message(ASSISTANT, "b")]))
    second = store.create(Conversation(title="two"))
    assert [c.title for c in store.list_chats()] == ["two", "one"]
    assert store.latest_chat_id() == second
    store.add_message(first, Message(USER, "c"))  # touching a chat moves it up
    assert [(c.title, c.num_messages) for c in store.list_chats()] == [("one", 3), ("two", 0)]
    store.rename(first, "uno")
    chat = store.load(first)
    store.delete_messages(first, chat.messages[1:])
    assert [m.content for m in store.load(first).messages] == ["a"]
    chat.messages[0].content = "a!"
    store.update_message(first, chat.messages[0])
    assert store.load(first).messages[0].content == "a!" and store.load(first).title == "uno"
    store.delete(first)
    assert [c.id for c in store.list_chats()] == [second]
    assert store._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0  # cascade
    with pytest.raises(KeyError):
        store.load(first)


def test_a_database_from_a_newer_version_is_refused(tmp_path):
    ChatStore(tmp_path).close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer localllm"):
        ChatStore(tmp_path)


def test_settings_json_ignores_unknown_keys_and_validates():
    base = ChatSettings(max_tokens=64)
    loaded = ChatSettings.from_json({"temperature": 0.0, "stop": ["x"], "from_the_future": 1}, base)
    assert loaded == ChatSettings(temperature=0.0, max_tokens=64, stop=("x",))
    assert ChatSettings.from_json(loaded.to_json()) == loaded
    with pytest.raises(ValueError, match="top_k"):
        ChatSettings(top_k=-5).validated()


def test_drop_oldest_turn_and_markdown_export():
    chat = Conversation(title="T", system="S", model="m", messages=[
        Message(USER, "q1"), Message(ASSISTANT, "a1"), Message(ERROR, "e1"),
        Message(USER, "q2"), Message(ASSISTANT, "a2")])
    markdown = chat.to_markdown()
    assert markdown.startswith("# T\n\nModel: `m`\n\n## System\n\nS\n\n## User\n\nq1\n\n## Assistant\n\na1")
    dropped = chat.drop_oldest_turn()
    assert [m.content for m in dropped] == ["q1", "a1", "e1"]
    assert [m.content for m in chat.messages] == ["q2", "a2"]
    assert chat.drop_oldest_turn() and chat.drop_oldest_turn() == [] and chat.messages == []
    assert Conversation().title_from("  a  long\nprompt " + "x" * 80).endswith("…")


def test_check_context_finds_the_fewest_turns_to_drop():
    from localllm.tui.overflow import check_context

    def count(messages):  # one token per character of content
        return sum(len(m["content"]) for m in messages)

    chat = Conversation(settings=ChatSettings(max_tokens=10), messages=[
        Message(USER, "a" * 20), Message(ASSISTANT, "b" * 20), Message(USER, "c" * 5), Message(ASSISTANT, "d" * 5)])
    assert check_context(count, chat, "e" * 5, 100) is None
    assert check_context(count, chat, "e" * 5, None) is None
    overflow = check_context(count, chat, "e" * 5, 40)
    assert (overflow.num_prompt_tokens, overflow.num_turns_to_drop, overflow.num_alone_tokens) == (55, 1, 5)
    assert overflow.fits_in_new_chat and "dropping the oldest 1 turn of this chat" in overflow.explain()
    overflow = check_context(count, chat, "e" * 25, 40)
    assert overflow.num_turns_to_drop == 2 and overflow.fits_in_new_chat
    overflow = check_context(count, chat, "e" * 35, 40)
    assert overflow.num_turns_to_drop is None and not overflow.fits_in_new_chat
    assert check_context(lambda messages: None, chat, "e" * 500, 40) is None
