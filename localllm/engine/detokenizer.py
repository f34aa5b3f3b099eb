"""IncrementalDetokenizer: token ids -> text as they arrive, plus stop strings (vLLM / TGI).

Decoding uses the prefix/read-offset method: with `ids` the tokens seen so far,
    prefix_text = decode(ids[prefix_offset:read_offset])   # already emitted
    new_text    = decode(ids[prefix_offset:])
and the new characters are new_text[len(prefix_text):]. Decoding a few tokens of left context
keeps tokenizers that drop a leading space on the first token (SentencePiece) correct, and a
new_text ending in U+FFFD means a UTF-8 character is still incomplete: nothing is emitted and
the offsets stay put until a later token completes it. Only the window from prefix_offset is
kept, so each token costs O(window), not O(all tokens).
"""

from __future__ import annotations

from typing import Protocol

from localllm.sampling_params import SamplingParams

# Prompt tokens decoded as left context for the first output token (vLLM's value).
_INITIAL_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


class Tokenizer(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer | None, prompt_token_ids: list[int], params: SamplingParams) -> None:
        # NOTE: with no tokenizer (an engine built from ids only) or detokenize=False, the text
        # stays empty and no stop string can match (SamplingParams forbids them then).
        self.enabled = tokenizer is not None and params.detokenize
        if params.stop and not self.enabled:
            raise ValueError("stop strings need a tokenizer and detokenize=True")
        self.tokenizer = tokenizer
        self.skip_special_tokens = params.skip_special_tokens
        self.stop: list[str] = list(params.stop or [])
        self.include_stop_str_in_output = params.include_stop_str_in_output
        self.min_tokens = params.min_tokens
        # NOTE: while streaming, hold back as many characters as a stop string could still need
        # to complete, so a stop string is never partly emitted and then cut.
        self.stop_buffer_length = (
            max((len(s) for s in self.stop), default=1) - 1 if not self.include_stop_str_in_output else 0
        )
        # Window of ids: ids[:prefix_offset] are dropped once emitted; offsets index _ids.
        self._ids: list[int] = list(prompt_token_ids[-_INITIAL_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._prefix_text: str | None = None  # decode(_ids[prefix:read]) while the offsets hold
        self._output_text = ""
        self._num_output_tokens = 0
        self._last_output_text_offset = 0  # end of what get_next_output_text(delta=True) returned
        self.stop_reason: str | None = None  # the stop string that ended the text, once matched

    @property
    def output_text(self) -> str:
        return self._output_text

    @property
    def num_output_tokens(self) -> int:
        return self._num_output_tokens

    def update(self, new_token_ids: list[int], stop_terminated: bool = False) -> str | None:
        """Append tokens; return the stop string matched in the new text, else None.

        On a match output_text is cut before the stop string (after it with
        include_stop_str_in_output). `stop_terminated`: the last id is a stop token / EOS that
        ends the request; its text is then left out, unless include_stop_str_in_output (vLLM).
        Calls after a stop string matched change nothing."""
        if self.stop_reason is not None:
            return None
        if not self.enabled:
            self._num_output_tokens += len(new_token_ids)
            return None
        to_decode = new_token_ids
        if stop_terminated and not self.include_stop_str_in_output and new_token_ids:
            to_decode = new_token_ids[:-1]
        # Stop strings may not end inside the text of the first min_tokens tokens.
        check_from = len(self._output_text)
        for i, token_id in enumerate(to_decode):
            self._ids.append(token_id)
            self._output_text += self._decode_next()
            if self._num_output_tokens + i + 1 <= self.min_tokens:
                check_from = len(self._output_text)
        self._num_output_tokens += len(new_token_ids)
        if not self.stop or len(self._output_text) == check_from:
            return None
        return self._check_stop(check_from)

    def _decode_next(self) -> str:
        if self._prefix_text is None:
            self._prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(self._prefix_text) or new_text.endswith(_REPLACEMENT_CHAR):
            return ""  # an incomplete character or a skipped special token: wait
        delta = new_text[len(self._prefix_text) :]
        # Advance: the emitted tokens become the next left context; drop what precedes it.
        del self._ids[: self._read_offset]
        self._prefix_offset, self._read_offset = 0, len(self._ids)
        self._prefix_text = None
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens) if ids else ""

    def _check_stop(self, new_from: int) -> str | None:
        """Find the earliest stop string that ends in text[new_from:] (it may start earlier)."""
        text = self._output_text
        best: tuple[int, str] | None = None
        for stop in self.stop:
            index = text.find(stop, max(new_from - len(stop) + 1, 0))
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop)
        if best is None:
            return None
        index, stop = best
        self._output_text = text[: index + len(stop)] if self.include_stop_str_in_output else text[:index]
        self.stop_reason = stop
        return stop

    def get_next_output_text(self, finished: bool, delta: bool) -> str:
        """Text for the next RequestOutput. Until finished, the last stop_buffer_length
        characters are held back. delta=True: only what is new since the last delta call."""
        hold = 0 if finished else self.stop_buffer_length
        end = max(len(self._output_text) - hold, 0)
        if not delta:
            return self._output_text[:end]
        start = self._last_output_text_offset
        if end <= start:
            return ""
        self._last_output_text_offset = end
        return self._output_text[start:end]

    def decode_token(self, token_id: int) -> str:
        """One token's own text, for Logprob.decoded_token (special tokens shown, vLLM-like)."""
        if not self.enabled:
            return ""
        return self.tokenizer.decode([token_id], skip_special_tokens=False)
