"""What every route shares: the engine, the model's description, settings, metrics, admission."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from localllm.server.errors import APIError
from localllm.server.metrics import ServerMetrics
from localllm.server.model_info import ModelInfo

RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class ServerSettings:
    api_key: str | None = None
    # Sequences (a request with n=4 counts 4) the server takes at once: what the engine runs
    # plus what may wait for it. Past this a request gets 429 with Retry-After.
    max_pending_seqs: int = 512
    # Web origins whose pages may call the API (cors.py); none by default.
    allowed_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_pending_seqs < 1:
            raise ValueError(f"max_pending_seqs must be >= 1, got {self.max_pending_seqs}")


class Ticket:
    """A request's place in the server; release() is idempotent."""

    def __init__(self, admission: "Admission", num_seqs: int) -> None:
        self._admission = admission
        self.num_seqs = num_seqs
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release(self.num_seqs)


class Admission:
    def __init__(self, limit: int, metrics: ServerMetrics) -> None:
        self.limit = limit
        self.in_flight = 0
        self._metrics = metrics
        self._lock = threading.Lock()

    def acquire(self, num_seqs: int) -> Ticket:
        if num_seqs > self.limit:
            raise APIError(400, f"this request needs {num_seqs} sequences; the server takes at most {self.limit}", param="n")
        with self._lock:
            if self.in_flight + num_seqs > self.limit:
                self._metrics.rejected.inc()
                raise APIError(
                    429,
                    f"the server is busy: {self.in_flight} sequences in flight (limit {self.limit}); retry shortly",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            self.in_flight += num_seqs
        return Ticket(self, num_seqs)

    def _release(self, num_seqs: int) -> None:
        with self._lock:
            self.in_flight -= num_seqs


class ServerState:
    def __init__(self, llm, model: ModelInfo, settings: ServerSettings) -> None:
        self.llm = llm
        self.model = model
        self.settings = settings
        self.metrics = ServerMetrics(llm.stats)
        self.admission = Admission(settings.max_pending_seqs, self.metrics)
        self.started = time.time()
        self._model_load_ns = int(model.load_seconds * 1e9)
        self._lock = threading.Lock()

    def take_model_load_ns(self) -> int:
        """The model's load time for the first answer that reports durations, 0 after: Ollama
        charges a load to the request that waited for it, and the first request is the one that
        would have (this server loads before it listens)."""
        with self._lock:
            load, self._model_load_ns = self._model_load_ns, 0
        return load

    def check_model(self, requested: str | None) -> None:
        if not self.model.matches(requested):
            raise APIError(
                404,
                f"The model `{requested}` does not exist. This server serves `{self.model.name}`.",
                param="model",
                code="model_not_found",
            )

    def tokenize(self, text: str) -> list[int]:
        """The engine's own tokenization (special tokens as the model expects, one BOS)."""
        return self.llm.tokenize(text)

    @property
    def vocab_size(self) -> int:
        return self.llm.vocab_size
