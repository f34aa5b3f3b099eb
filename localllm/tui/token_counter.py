"""Prompt tokens of a chat, counted by the server: vLLM's POST /tokenize, which `localllm serve`
has too (rendered through its chat route's template path, so the count is what that route runs).

The overflow check asks for counts synchronously and several times per send (it drops old turns
until the prompt fits), and the status line asks again for the same messages; so:
- answers are cached by a hash of (model, messages): a repeated question costs no request;
- a server without the endpoint (404/405/501, or a 200 that is not /tokenize's answer: Ollama,
  older servers) is remembered as such and never asked again: every count is then None;
- a connection that fails or times out (2 s) holds requests off for RETRY_AFTER_SECONDS.
None means "cannot count": the caller goes on without the warning (the server still refuses an
overlong prompt with its own error).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict

TIMEOUT_SECONDS = 2.0
RETRY_AFTER_SECONDS = 30.0
CACHE_SIZE = 512
MISSING_STATUSES = frozenset({404, 405, 501})


def _key(model: str | None, messages: list[dict]) -> str:
    data = json.dumps([model, messages], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(data.encode()).hexdigest()


class RemoteTokenCounter:
    def __init__(self, url: str, model: str | None = None, *, timeout: float = TIMEOUT_SECONDS) -> None:
        self.url = url
        self.model = model
        self.timeout = timeout
        self.missing = False  # the server has no /tokenize: never asked again
        self.num_requests = 0
        self._retry_at = 0.0  # monotonic time before which no request goes (after a failure)
        # NOTE: None is cached too (a chat the template refuses): the same question, the same answer.
        self._cache: OrderedDict[str, int | None] = OrderedDict()
        # NOTE: counts come from the UI's event loop and from worker threads; the lock guards the
        # cache and the flags, never a request (a slow server must not hold the other caller).
        self._lock = threading.Lock()
        self._client = None

    def count(self, messages: list[dict]) -> int | None:
        key = _key(self.model, messages)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            if self.missing or time.monotonic() < self._retry_at:
                return None
            self.num_requests += 1
        known, count = self._fetch(messages)
        if known:
            with self._lock:
                self._cache[key] = count
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return count

    def _fetch(self, messages: list[dict]) -> tuple[bool, int | None]:
        """(whether the answer may be cached, the count or None)."""
        import httpx

        body = {"model": self.model, "messages": messages, "add_generation_prompt": True}
        try:
            response = self._http().post(f"{self.url}/tokenize", json=body, timeout=self.timeout)
        except httpx.HTTPError:
            return self._failed()
        if response.status_code in MISSING_STATUSES:
            return self._no_endpoint()
        if response.status_code == 400:
            return True, None  # these messages cannot be counted (the template refuses them)
        if response.status_code != 200:
            return self._failed()  # busy, or the engine stopped: maybe later
        try:
            count = response.json().get("count")
        except (ValueError, AttributeError):
            count = None
        if not isinstance(count, int) or isinstance(count, bool):
            return self._no_endpoint()  # a catch-all route answered: not /tokenize
        return True, count

    def _no_endpoint(self) -> tuple[bool, None]:
        with self._lock:
            self.missing = True
        return False, None

    def _failed(self) -> tuple[bool, None]:
        with self._lock:
            self._retry_at = time.monotonic() + RETRY_AFTER_SECONDS
        return False, None

    def _http(self):
        import httpx

        with self._lock:
            if self._client is None:
                self._client = httpx.Client()  # NOTE: kept alive: one connection for every count
            return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
