"""Chats in SQLite: `chats.sqlite3` in the user data directory (platformdirs), or in
$LOCALLLM_HOME when that is set, or in the `--data-dir` given.

NOTE: one connection, used from the app's thread only. Every write commits at once, so a crash
or a kill loses at most the answer being streamed (it is saved when it ends).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from localllm.tui.conversation import Conversation, Message
from localllm.tui.settings import ChatSettings

DB_NAME = "chats.sqlite3"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    model TEXT,
    system TEXT,
    settings TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_chat ON messages(chat_id, id);
"""


def default_data_dir() -> Path:
    home = os.environ.get("LOCALLLM_HOME")
    if home:
        return Path(home).expanduser()
    import platformdirs

    return platformdirs.user_data_path("localllm", appauthor=False)


@dataclass(frozen=True)
class ChatSummary:
    id: int
    title: str
    model: str | None
    num_messages: int
    updated: float


class ChatStore:
    def __init__(self, data_dir: str | Path | None = None) -> None:
        directory = Path(data_dir) if data_dir is not None else default_data_dir()
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_NAME
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA foreign_keys = ON")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} was written by a newer localllm (schema {version})")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ chats

    def list_chats(self) -> list[ChatSummary]:
        rows = self._db.execute(
            "SELECT c.id, c.title, c.model, COUNT(m.id), c.updated FROM chats c "
            "LEFT JOIN messages m ON m.chat_id = c.id GROUP BY c.id ORDER BY c.updated DESC, c.id DESC"
        ).fetchall()
        return [ChatSummary(*row) for row in rows]

    def latest_chat_id(self) -> int | None:
        row = self._db.execute("SELECT id FROM chats ORDER BY updated DESC, id DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def create(self, conversation: Conversation) -> int:
        """Store a conversation that has no id yet, with the messages it holds."""
        now = time.time()
        cursor = self._db.execute(
            "INSERT INTO chats (title, model, system, settings, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
            (conversation.title, conversation.model, conversation.system,
             json.dumps(conversation.settings.to_json()), now, now),
        )
        conversation.id = cursor.lastrowid
        for message in conversation.messages:
            self._insert_message(conversation.id, message)
        self._db.commit()
        return conversation.id

    def load(self, chat_id: int, defaults: ChatSettings | None = None) -> Conversation:
        row = self._db.execute(
            "SELECT id, title, model, system, settings FROM chats WHERE id = ?", (chat_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no chat {chat_id}")
        messages = [
            Message(role, content, json.loads(meta), message_id)
            for message_id, role, content, meta in self._db.execute(
                "SELECT id, role, content, meta FROM messages WHERE chat_id = ? ORDER BY id", (chat_id,)
            )
        ]
        return Conversation(id=row[0], title=row[1], model=row[2], system=row[3],
                            settings=ChatSettings.from_json(json.loads(row[4]), defaults), messages=messages)

    def save_header(self, conversation: Conversation) -> None:
        """Title, model, system prompt and settings."""
        self._db.execute(
            "UPDATE chats SET title = ?, model = ?, system = ?, settings = ?, updated = ? WHERE id = ?",
            (conversation.title, conversation.model, conversation.system,
             json.dumps(conversation.settings.to_json()), time.time(), conversation.id),
        )
        self._db.commit()

    def rename(self, chat_id: int, title: str) -> None:
        self._db.execute("UPDATE chats SET title = ? WHERE id = ?", (title, chat_id))
        self._db.commit()

    def delete(self, chat_id: int) -> None:
        self._db.execute("DELETE FROM chats WHERE id = ?", (chat_id,))
        self._db.commit()

    # ------------------------------------------------------------------ messages

    def add_message(self, chat_id: int, message: Message) -> None:
        self._insert_message(chat_id, message)
        self._touch(chat_id)
        self._db.commit()

    def update_message(self, chat_id: int, message: Message) -> None:
        self._db.execute("UPDATE messages SET content = ?, meta = ? WHERE id = ?",
                         (message.content, json.dumps(message.meta), message.id))
        self._touch(chat_id)
        self._db.commit()

    def delete_messages(self, chat_id: int, messages: list[Message]) -> None:
        ids = [(m.id,) for m in messages if m.id is not None]
        self._db.executemany("DELETE FROM messages WHERE id = ?", ids)
        self._touch(chat_id)
        self._db.commit()

    def _insert_message(self, chat_id: int, message: Message) -> None:
        cursor = self._db.execute(
            "INSERT INTO messages (chat_id, role, content, meta, created) VALUES (?, ?, ?, ?, ?)",
            (chat_id, message.role, message.content, json.dumps(message.meta), time.time()),
        )
        message.id = cursor.lastrowid

    def _touch(self, chat_id: int) -> None:
        self._db.execute("UPDATE chats SET updated = ? WHERE id = ?", (time.time(), chat_id))
