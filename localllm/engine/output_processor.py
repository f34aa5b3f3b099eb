"""Turns sampled tokens into RequestOutputs: detokenize, apply stop strings, gather logprobs,
and fold the n samples of a request into one output (vLLM's output processor).

A user request with n > 1 runs as n child sequences `{i}_{request_id}` in the scheduler; the
children share the prompt, so the prefix cache serves its full blocks once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from localllm.engine.detokenizer import IncrementalDetokenizer
from localllm.engine.request import Request, RequestStatus
from localllm.outputs import (
    CompletionOutput,
    Logprob,
    PromptLogprobs,
    RequestMetrics,
    RequestOutput,
    SampleLogprobs,
    TokenLogprobs,
)
from localllm.sampling_params import RequestOutputKind, SamplingParams


def child_request_id(index: int, request_id: str, n: int) -> str:
    return request_id if n == 1 else f"{index}_{request_id}"


@dataclass
class SequenceState:
    index: int
    request: Request
    detokenizer: IncrementalDetokenizer
    logprobs: SampleLogprobs | None
    cumulative_logprob: float | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_sent_tokens: int = 0
    num_sent_logprobs: int = 0
    changed: bool = False


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    sequences: list[SequenceState]
    metrics: RequestMetrics
    prompt_logprobs: PromptLogprobs | None = None
    num_prompt_logprobs_sent: int = 0
    num_cached_tokens: int = 0
    child_ids: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.sequences)


class OutputProcessor:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.states: dict[str, RequestState] = {}
        self.child_to_parent: dict[str, tuple[RequestState, SequenceState]] = {}

    def add_request(self, request_id: str, prompt: str | None, children: list[Request], params: SamplingParams) -> None:
        state = RequestState(
            request_id=request_id,
            prompt=prompt,
            prompt_token_ids=children[0].prompt_token_ids,
            params=params,
            sequences=[],
            metrics=RequestMetrics(arrival_time=children[0].arrival_time),
            prompt_logprobs=[None] if params.prompt_logprobs is not None else None,
        )
        for index, child in enumerate(children):
            seq = SequenceState(
                index=index,
                request=child,
                detokenizer=IncrementalDetokenizer(self.tokenizer, child.prompt_token_ids, child.sampling_params),
                logprobs=[] if params.logprobs is not None else None,
                cumulative_logprob=0.0 if params.logprobs is not None else None,
            )
            state.sequences.append(seq)
            state.child_ids.append(child.request_id)
            self.child_to_parent[child.request_id] = (state, seq)
        self.states[request_id] = state

    def child_ids(self, request_id: str) -> list[str]:
        state = self.states.get(request_id)
        return list(state.child_ids) if state else []

    def remove(self, request_id: str) -> None:
        state = self.states.pop(request_id, None)
        if state is not None:
            for child_id in state.child_ids:
                self.child_to_parent.pop(child_id, None)

    # ------------------------------------------------------------------ per step

    def process(
        self,
        updated: list[Request],
        logprobs_by_id: dict[str, TokenLogprobs | None],
        prompt_logprobs_by_id: dict[str, list[TokenLogprobs | None]],
        num_cached_tokens: dict[str, int],
    ) -> tuple[list[RequestOutput], list[str]]:
        """Returns the outputs to deliver and the child ids that a stop string ended (the
        engine must finish them in the scheduler)."""
        now = time.monotonic()
        touched: dict[str, RequestState] = {}
        stopped_by_string: list[str] = []

        for child_id, count in num_cached_tokens.items():
            entry = self.child_to_parent.get(child_id)
            if entry is not None:
                entry[0].num_cached_tokens = max(entry[0].num_cached_tokens, count)
                if entry[0].metrics.first_scheduled_time is None:
                    entry[0].metrics.first_scheduled_time = now

        for child_id, entries in prompt_logprobs_by_id.items():
            entry = self.child_to_parent.get(child_id)
            if entry is None or entry[0].prompt_logprobs is None or entry[1].index != 0:
                continue
            entry[0].prompt_logprobs.extend(self._to_logprob_dicts(entries))
            touched[entry[0].request_id] = entry[0]

        for request in updated:
            entry = self.child_to_parent.get(request.request_id)
            if entry is None:
                continue
            state, seq = entry
            token = request.output_token_ids[-1]
            lp = logprobs_by_id.get(request.request_id)
            if seq.logprobs is not None and lp is not None:
                seq.logprobs.extend(self._to_logprob_dicts([lp]))
                seq.cumulative_logprob += lp.logprobs[0]
            # NOTE: a sequence ended by EOS or a stop token does not show that token's text.
            stop_terminated = request.status == RequestStatus.FINISHED_STOPPED
            stop_string = seq.detokenizer.update([token], stop_terminated)
            if stop_string is not None:
                seq.finish_reason, seq.stop_reason = "stop", stop_string
                if not request.is_finished:
                    stopped_by_string.append(request.request_id)
            elif request.is_finished:
                seq.finish_reason = request.status.finish_reason
                seq.stop_reason = request.stop_reason
            seq.changed = True
            if state.metrics.first_token_time is None:
                state.metrics.first_token_time = now
            state.metrics.last_token_time = now
            touched[state.request_id] = state

        outputs = []
        for state in touched.values():
            output = self._make_output(state)
            if output is not None:
                outputs.append(output)
            if state.finished:
                state.metrics.finished_time = now
                self.remove(state.request_id)
        return outputs, stopped_by_string

    def abort_output(self, request_id: str) -> RequestOutput | None:
        """Mark a request aborted and return its last output (finish_reason "abort")."""
        state = self.states.get(request_id)
        if state is None:
            return None
        for seq in state.sequences:
            if seq.finish_reason is None:
                seq.finish_reason = RequestStatus.FINISHED_ABORTED.finish_reason
                seq.changed = True
        output = self._make_output(state)
        self.remove(request_id)
        return output

    # ------------------------------------------------------------------ building outputs

    def _to_logprob_dicts(self, entries: list[TokenLogprobs | None]) -> list[dict[int, Logprob] | None]:
        result: list[dict[int, Logprob] | None] = []
        for entry in entries:
            if entry is None:
                result.append(None)
                continue
            d: dict[int, Logprob] = {}
            for token_id, logprob, rank in zip(entry.token_ids, entry.logprobs, entry.ranks):
                if token_id not in d:
                    text = self.tokenizer.decode([token_id]) if self.tokenizer is not None else None
                    d[token_id] = Logprob(logprob, rank, text)
            result.append(d)
        return result

    def _make_output(self, state: RequestState) -> RequestOutput | None:
        kind = state.params.output_kind
        finished = state.finished
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        delta = kind == RequestOutputKind.DELTA
        completions = []
        for seq in state.sequences:
            if delta and not seq.changed:
                continue
            token_ids = seq.request.output_token_ids
            seq_finished = seq.finish_reason is not None
            text = seq.detokenizer.get_next_output_text(seq_finished, delta)
            if delta:
                new_tokens = token_ids[seq.num_sent_tokens :]
                logprobs = seq.logprobs[seq.num_sent_logprobs :] if seq.logprobs is not None else None
            else:
                new_tokens = list(token_ids)
                logprobs = list(seq.logprobs) if seq.logprobs is not None else None
            seq.num_sent_tokens = len(token_ids)
            seq.num_sent_logprobs = len(seq.logprobs) if seq.logprobs is not None else 0
            seq.changed = False
            completions.append(
                CompletionOutput(
                    index=seq.index,
                    text=text,
                    token_ids=new_tokens,
                    cumulative_logprob=seq.cumulative_logprob,
                    logprobs=logprobs,
                    finish_reason=seq.finish_reason,
                    stop_reason=seq.stop_reason,
                )
            )
        prompt_logprobs = state.prompt_logprobs
        if prompt_logprobs is not None and delta:
            prompt_logprobs = prompt_logprobs[state.num_prompt_logprobs_sent :]
            state.num_prompt_logprobs_sent = len(state.prompt_logprobs)
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            outputs=completions,
            finished=finished,
            prompt_logprobs=prompt_logprobs,
            num_cached_tokens=state.num_cached_tokens,
            metrics=state.metrics,
        )
