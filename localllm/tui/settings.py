"""Per-chat sampling settings: what the settings dialog edits, what the store keeps as JSON,
and what becomes SamplingParams (validated there, so the dialog shows the engine's own message).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

# Ollama-like defaults, the same as `localllm run`.
DEFAULT_MAX_TOKENS = 512
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.9
DEFAULT_TOP_K = 40


@dataclass(frozen=True)
class ChatSettings:
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = DEFAULT_TOP_K
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int = DEFAULT_MAX_TOKENS
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def to_sampling_params(self):
        """SamplingParams streaming deltas; raises ValueError with the engine's message."""
        from localllm.sampling_params import RequestOutputKind, SamplingParams

        return SamplingParams(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
            repetition_penalty=self.repetition_penalty, max_tokens=self.max_tokens, seed=self.seed,
            stop=list(self.stop), output_kind=RequestOutputKind.DELTA,
        )

    def validated(self) -> "ChatSettings":
        self.to_sampling_params()
        return self

    def to_json(self) -> dict:
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data

    @classmethod
    def from_json(cls, data: dict | None, base: "ChatSettings | None" = None) -> "ChatSettings":
        """Known keys over `base` (defaults); unknown keys (from a newer version) are ignored."""
        base = base or cls()
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in (data or {}).items() if k in known}
        if "stop" in values:
            values["stop"] = tuple(values["stop"] or ())
        return replace(base, **values)
