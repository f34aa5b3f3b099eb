"""Engine logprobs (per position: {token id: Logprob}, the chosen token first) in each API's
shape: OpenAI chat (`content: [{token, logprob, bytes, top_logprobs}]`), OpenAI completions
(`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`), Ollama (`[{token, logprob,
top_logprobs}]`)."""

from __future__ import annotations

from localllm.outputs import Logprob

# NOTE: JSON has no -inf; a token the model gives no chance at all reports this instead.
_MIN_LOGPROB = -9999.0


def _value(logprob: float) -> float:
    return max(logprob, _MIN_LOGPROB)


def _token_text(lp: Logprob) -> str:
    return lp.decoded_token if lp.decoded_token is not None else ""


def _top(entry: dict[int, Logprob], k: int) -> list[Logprob]:
    ranked = [lp for lp in entry.values() if lp.rank is not None and lp.rank <= k]
    return sorted(ranked, key=lambda lp: lp.rank)[:k]


def chat_logprobs(entries: list[dict[int, Logprob]], k: int) -> dict:
    content = []
    for entry in entries:
        chosen = next(iter(entry.values()))
        token = _token_text(chosen)
        content.append({
            "token": token,
            "logprob": _value(chosen.logprob),
            "bytes": list(token.encode("utf-8")),
            "top_logprobs": [
                {"token": _token_text(lp), "logprob": _value(lp.logprob), "bytes": list(_token_text(lp).encode("utf-8"))}
                for lp in _top(entry, k)
            ],
        })
    return {"content": content}


def ollama_logprobs(entries: list[dict[int, Logprob]], k: int) -> list[dict]:
    out = []
    for entry in entries:
        chosen = next(iter(entry.values()))
        item = {"token": _token_text(chosen), "logprob": _value(chosen.logprob)}
        if k:
            item["top_logprobs"] = [{"token": _token_text(lp), "logprob": _value(lp.logprob)} for lp in _top(entry, k)]
        out.append(item)
    return out


class CompletionLogprobs:
    """Builds the legacy completions `logprobs` object, chunk by chunk when streaming."""

    def __init__(self, text_offset: int = 0) -> None:
        self.offset = text_offset

    def build(self, positions: list[tuple[str, dict[int, Logprob] | None, int | None]]) -> dict:
        """positions: (token text, entry or None, chosen id); None entries (the first prompt
        token) have no logprob, as in OpenAI's echo."""
        result = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for text, entry, token_id in positions:
            if entry is not None:
                chosen = entry.get(token_id) if token_id is not None else None
                chosen = chosen or next(iter(entry.values()))
                text = _token_text(chosen)
                result["token_logprobs"].append(_value(chosen.logprob))
                result["top_logprobs"].append({_token_text(lp): _value(lp.logprob) for lp in entry.values()})
            else:
                result["token_logprobs"].append(None)
                result["top_logprobs"].append(None)
            result["tokens"].append(text)
            result["text_offset"].append(self.offset)
            self.offset += len(text)
        return result
