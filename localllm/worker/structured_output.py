"""Constrained decoding: per-request grammar matchers (xgrammar) -> each step's allowed-token
bitmask, which the Sampler applies before sampling.

The bitmask is filled on the host from the matchers' state, before the forward pass, and copied
to the device with the rest of the sampling batch: no extra host sync per token. After the step's
one sync (the sampled ids), each matcher accepts its row's token.

xgrammar is imported on first use only: engines that never see a constrained request never pay
for it.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from localllm.engine.request import Request

# NOTE: compact JSON (no free whitespace): small models otherwise loop on newlines inside an
# object. Fixed separators are what json.dumps writes too.
_JSON_OPTIONS = dict(any_whitespace=False, strict_mode=True)


@lru_cache(maxsize=256)
def check_json_schema(schema: str) -> None:
    """Raise ValueError unless xgrammar can turn this JSON schema into a grammar."""
    import xgrammar as xgr

    try:
        xgr.Grammar.from_json_schema(schema, **_JSON_OPTIONS)
    except Exception as e:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError variants
        # xgrammar prefixes its C++ errors with "[time] file.cc:line: ".
        message = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", str(e).strip())
        raise ValueError(f"unsupported JSON schema: {message}") from None


class StructuredOutputManager:
    """Owned by the ModelRunner; lives on the engine thread."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._stop_token_ids = sorted(stop_token_ids)
        self._compiler = None
        self._lock = threading.Lock()
        self.matchers: dict[str, object] = {}  # request id -> xgrammar.GrammarMatcher

    def _get_compiler(self):
        with self._lock:
            if self._compiler is None:
                import xgrammar as xgr

                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self.vocab_size, stop_token_ids=self._stop_token_ids
                )
                self._compiler = xgr.GrammarCompiler(info, max_threads=1)
            return self._compiler

    def _matcher(self, request: "Request"):
        matcher = self.matchers.get(request.request_id)
        if matcher is None:
            import xgrammar as xgr

            spec = request.sampling_params.structured_outputs
            # NOTE: the compiler caches by schema text, so n > 1 children and repeated schemas
            # compile once.
            compiled = self._get_compiler().compile_json_schema(spec.schema, **_JSON_OPTIONS)
            # NOTE: created before the request's first sampled token, so it has seen every output
            # token; a preempted request keeps its matcher (its output tokens do not change).
            matcher = self.matchers[request.request_id] = xgr.GrammarMatcher(compiled)
        return matcher

    def bitmask(self, requests: list["Request"]) -> torch.Tensor | None:
        """int32[N, ceil(V/32)] on the host, bit t of row i set when row i may emit token t;
        None when no row is constrained."""
        rows = [i for i, r in enumerate(requests) if r.sampling_params.structured_outputs is not None]
        if not rows:
            return None
        words = (self.vocab_size + 31) // 32
        mask = torch.full((len(requests), words), -1, dtype=torch.int32)
        for i in rows:
            self._matcher(requests[i]).fill_next_token_bitmask(mask, index=i)
        return mask

    def accept(self, requests: list["Request"], token_ids: list[int]) -> None:
        for request, token in zip(requests, token_ids):
            matcher = self.matchers.get(request.request_id)
            if matcher is not None and not matcher.is_terminated():
                matcher.accept_token(token)

    def remove(self, request_ids) -> None:
        for request_id in request_ids:
            self.matchers.pop(request_id, None)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """-inf where the bit of a token is clear; out of place, on the logits' device, no sync."""
    vocab = logits.shape[-1]
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).bool().flatten(1)[:, :vocab]
    return logits.masked_fill(~allowed, float("-inf"))
