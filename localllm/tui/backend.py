"""What the chat app streams from. Two backends share this surface: the engine in this process
(engine_backend.py) and a running `localllm serve` (http_backend.py); tests add scripted ones.

The app calls `load()` once, in a thread, while the UI is already up; everything else runs
on the app's event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Callable, Protocol

from localllm.hub.progress import PullProgress
from localllm.tui.settings import ChatSettings


class BackendError(Exception):
    """A problem the user should read (str(error) is one line); the app shows it and goes on."""


@dataclass(frozen=True)
class LoadStep:
    """Progress of the load: `label` is the step under way; `done`/`total` count its units
    (tensors, bytes, ...) when known; `pull` is the download's (or local quantization's) event
    behind this step, with its per-file figures."""

    label: str
    done: int | None = None
    total: int | None = None
    pull: PullProgress | None = None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    quantization: str | None  # "int4 (Q4_1)", "float32", ... None when not known (remote)
    max_model_len: int | None  # None when the server does not say


@dataclass
class Delta:
    """One streamed piece of an answer. Counts are None where the backend cannot tell."""

    text: str
    num_new_tokens: int = 0
    finish_reason: str | None = None  # "stop" | "length" | "abort" on the last delta
    num_prompt_tokens: int | None = None
    num_cached_tokens: int | None = None


class ChatBackend(Protocol):
    def load(self, progress: Callable[[LoadStep], None]) -> ModelInfo:
        """Blocking; runs in a worker thread. Raises on failure (the app shows the message)."""

    def stream(self, messages: list[dict], settings: ChatSettings, request_id: str) -> AsyncIterator[Delta]:
        """Deltas of the answer to `messages`. The last one has a finish_reason."""

    async def abort(self, request_id: str) -> None:
        """Stop the request now. NOTE: the stream still ends with a delta whose finish_reason is
        "abort" (the engine has freed the request's blocks by then)."""

    def count_tokens(self, messages: list[dict]) -> int | None:
        """Prompt tokens `messages` would take, or None when the backend cannot count."""

    def kv_cache_usage(self) -> tuple[int, int] | None:
        """(blocks in use, total blocks), or None when not known."""

    def shutdown(self) -> None: ...
