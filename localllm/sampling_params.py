"""SamplingParams: how one request is sampled and when it stops (vLLM's field names)."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

_GREEDY_EPS = 1e-5


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0  # each RequestOutput holds everything generated so far
    DELTA = 1  # each RequestOutput holds only what is new since the last one
    FINAL_ONLY = 2  # one RequestOutput, when the request finishes


@dataclass(frozen=True)
class StructuredOutputsParams:
    """Constrain the output to a grammar (vLLM's name): `json`, a JSON schema (dict or its JSON
    text), or `json_object=True`, any JSON object. Checked here, so a bad schema is a ValueError
    before the request reaches the engine; the worker compiles it (xgrammar) for the tokenizer.

    NOTE: `json` is kept as JSON text (hashable, cheap to copy, the compile cache key).
    """

    json: str | dict | None = None
    json_object: bool = False

    def __post_init__(self) -> None:
        if (self.json is not None) == bool(self.json_object):
            raise ValueError("structured outputs need exactly one of json (a schema) or json_object=True")
        if self.json is None:
            return
        schema = self.json
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise ValueError(f"the JSON schema is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise ValueError(f"a JSON schema must be an object, got {type(schema).__name__}")
        # NOTE: keys keep their order: "properties" order is the order the output follows.
        text = json.dumps(schema, ensure_ascii=False)
        object.__setattr__(self, "json", text)
        from localllm.worker.structured_output import check_json_schema

        check_json_schema(text)

    @property
    def schema(self) -> str:
        """The JSON schema the output must follow (json_object: any object)."""
        return self.json if self.json is not None else '{"type": "object"}'


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None  # number of top logprobs per generated token (plus the sampled one)
    prompt_logprobs: int | None = None  # number of top logprobs per prompt token
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    detokenize: bool = True  # False: token ids only, no text (and no stop strings)
    structured_outputs: StructuredOutputsParams | None = None  # JSON schema / object constraint
    # Filled by the engine from the model's generation config / tokenizer; not user-facing.
    _eos_token_ids: frozenset[int] = field(default_factory=frozenset, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        self._validate()

    def _validate(self) -> None:
        def bad(name: str, value, expected: str) -> ValueError:
            return ValueError(f"{name} must be {expected}, got {value!r}")

        if not isinstance(self.n, int) or self.n < 1:
            raise bad("n", self.n, "an integer >= 1")
        if self.temperature < 0.0:
            raise bad("temperature", self.temperature, ">= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", self.top_p, "in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", self.top_k, "0 or -1 (off) or a positive integer")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", self.min_p, "in [0, 1]")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise bad("presence_penalty", self.presence_penalty, "in [-2, 2]")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise bad("frequency_penalty", self.frequency_penalty, "in [-2, 2]")
        if not self.repetition_penalty > 0.0:
            raise bad("repetition_penalty", self.repetition_penalty, "> 0")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise bad("max_tokens", self.max_tokens, "an integer >= 1 or None")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise bad("min_tokens", self.min_tokens, "an integer >= 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad("min_tokens", self.min_tokens, f"<= max_tokens ({self.max_tokens})")
        if self.seed is not None and not isinstance(self.seed, int):
            raise bad("seed", self.seed, "an integer or None")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0 or value > 20):
                raise bad(name, value, "an integer in [0, 20] or None")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop", self.stop, "non-empty strings")
        if self.stop and not self.detokenize:
            raise ValueError("stop strings need detokenize=True (use stop_token_ids to stop on ids)")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", self.stop_token_ids, "non-negative integers")
        if self.structured_outputs is not None:
            if not isinstance(self.structured_outputs, StructuredOutputsParams):
                raise bad("structured_outputs", self.structured_outputs, "a StructuredOutputsParams")
            # NOTE: a grammar ends the output by allowing only EOS once it is complete; forcing
            # more tokens past that point would leave no token allowed.
            if self.ignore_eos or self.min_tokens:
                raise ValueError(
                    "structured outputs end when the grammar is complete: "
                    "ignore_eos and min_tokens are not supported with them"
                )

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    @property
    def penalizes(self) -> bool:
        """True when a penalty can change a logit (each reads the tokens seen so far)."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    def clone(self) -> "SamplingParams":
        import copy

        return copy.deepcopy(self)
