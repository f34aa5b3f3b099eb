"""One interface over the engines a benchmark compares: load a model, run a batch of token-id
prompts to exactly `output_len` tokens each (greedy, EOS ignored), and time every request.

Backends: `local` (localllm), `hf` (Hugging Face transformers `generate`), `llama.cpp` (through
llama-cpp-python). Each one is imported only when it is loaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from localllm.errors import LocalLLMError

PEERS = ("hf", "llama.cpp")


class PeerUnavailable(LocalLLMError):
    """A peer that cannot run here (not installed, no GGUF for it, ...): said, not raised past
    the command."""


@dataclass
class BatchTiming:
    """perf_counter times of one batch: when it was submitted, each request's first token and end."""

    started: float
    first_token: list[float] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0

    @property
    def seconds(self) -> float:
        return max(self.finished) - self.started

    @property
    def ttft(self) -> float:
        """Until every request of the batch has its first token."""
        return max(self.first_token) - self.started

    @property
    def seconds_per_output_token(self) -> float | None:
        """Decode time per token of one sequence: (end - first token) / (tokens - 1), over the batch."""
        per_request = self.num_output_tokens / len(self.finished)
        if per_request <= 1:
            return None
        return (self.seconds - self.ttft) / (per_request - 1)


class Backend:
    name = ""
    sequential = False  # runs one sequence at a time (llama-cpp-python's high-level API)
    device = "cpu"

    def describe(self) -> dict:
        """Version and settings, for the record."""
        raise NotImplementedError

    def decode_bytes(self) -> dict:
        """{"weight_bytes": read per decode step, "kv_bytes_per_token": per token of context}."""
        raise NotImplementedError

    def run(self, prompts: list[list[int]], output_len: int) -> BatchTiming:
        raise NotImplementedError

    def close(self) -> None:
        pass


def now() -> float:
    return time.perf_counter()


def load_peer(name: str, model_path: str, *, device: str, max_model_len: int, max_batch_size: int) -> Backend:
    """Load the peer `name` on the model at `model_path` (a GGUF file or a model directory)."""
    if name == "hf":
        from localllm.bench.hf_backend import HFBackend

        return HFBackend(model_path, device=device, max_batch_size=max_batch_size)
    if name == "llama.cpp":
        from localllm.bench.llamacpp_backend import LlamaCppBackend

        return LlamaCppBackend(model_path, device=device, max_model_len=max_model_len)
    raise ValueError(f"--vs must be one of {', '.join(PEERS)}, got {name!r}")
