"""A scripted LLMEngine for protocol tests, run under the real AsyncLLM (its engine thread,
queues and abort path are the real ones). No model, no torch work.

Each word of a prompt is a token; the reply is a list of text pieces, one token each, chosen by
`reply(prompt_text, params)`. Every step emits the next piece of every running sequence, after
`step_delay` seconds. KV "blocks" are counted like the real pool: ceil(tokens / 16) per sequence.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

from localllm.errors import PromptTooLongError
from localllm.outputs import CompletionOutput, Logprob, RequestOutput
from localllm.sampling_params import SamplingParams

BLOCK_SIZE = 16
FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")


class FakeTokenizer:
    bos_token_id = None

    def __init__(self, extra_tokens=()) -> None:
        self.vocab: dict[str, int] = {"<eos>": 0}
        self._lock = threading.Lock()
        for token in extra_tokens:
            self._id(token)

    def _id(self, word: str) -> int:
        with self._lock:
            return self.vocab.setdefault(word, len(self.vocab))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [self._id(w) for w in text.split()]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        inverse = {i: w for w, i in self.vocab.items()}
        return " ".join(inverse.get(i, f"<{i}>") for i in ids)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)


def default_reply(prompt: str, params: SamplingParams) -> list[str]:
    return ["Hello", " from", " the", " fake", " engine", "."]


@dataclass
class _Seq:
    pieces: list[str]
    pos: int = 0
    finish_reason: str | None = None


@dataclass
class _Req:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[_Seq]
    sent_prompt_logprobs: bool = False
    extra: dict = field(default_factory=dict)


class FakeLLMEngine:
    def __init__(self, *, reply=default_reply, max_model_len: int = 256, num_blocks: int = 256,
                 step_delay: float = 0.002, chat_template: str | None = "{{ fake }}", fim: bool = False) -> None:
        self.tokenizer = FakeTokenizer(FIM_TOKENS if fim else ())
        self.chat_template = chat_template
        self.max_model_len = max_model_len
        self.num_blocks = num_blocks
        self.config_vocab_size = 1000
        self.load_seconds = 0.25
        self.reply = reply
        self.step_delay = step_delay
        self.fail_next_step: Exception | None = None
        self.requests: dict[str, _Req] = {}
        self.output_processor = SimpleNamespace(states=self.requests)
        self.added: list[_Req] = []
        self.aborted: list[str] = []
        self.rendered: list[tuple[list[dict], dict]] = []

    # ---------------------------------------------------------------- the LLMEngine surface

    def tokenize(self, prompt):
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        return prompt.get("prompt"), list(prompt["prompt_token_ids"])

    def validate(self, token_ids: list[int], params: SamplingParams) -> None:
        if not token_ids:
            raise ValueError("the prompt is empty")
        if len(token_ids) >= self.max_model_len:
            raise PromptTooLongError(len(token_ids), self.max_model_len)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        self.rendered.append((messages, kwargs))
        return " ".join(f"<{m['role']}> {m['content']}" for m in messages) + " <assistant>"

    def add_request(self, request_id: str, prompt: dict, params: SamplingParams) -> None:
        text, ids = self.tokenize(prompt)
        seqs = [_Seq(list(self.reply(text or "", params))) for _ in range(params.n)]
        req = _Req(request_id, text, ids, params, seqs)
        self.requests[request_id] = req
        self.added.append(req)

    def abort_request(self, request_ids) -> list[RequestOutput]:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        outputs = []
        for request_id in request_ids:
            req = self.requests.pop(request_id, None)
            if req is None:
                continue
            self.aborted.append(request_id)
            completions = [CompletionOutput(i, "", [], finish_reason="abort") for i, s in enumerate(req.seqs) if not s.finish_reason]
            outputs.append(RequestOutput(request_id, req.prompt, req.prompt_token_ids, completions, True))
        return outputs

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[RequestOutput]:
        time.sleep(self.step_delay)
        if self.fail_next_step is not None:
            error, self.fail_next_step = self.fail_next_step, None
            raise error
        outputs = []
        for req in list(self.requests.values()):
            completions = []
            for index, seq in enumerate(req.seqs):
                if seq.finish_reason:
                    continue
                completions.append(self._next(req, index, seq))
            prompt_logprobs = None
            if req.params.prompt_logprobs is not None and not req.sent_prompt_logprobs:
                req.sent_prompt_logprobs = True
                prompt_logprobs = [None] + [
                    {t: Logprob(-1.0, 1, self.tokenizer.decode([t]))} for t in req.prompt_token_ids[1:]
                ]
            finished = all(s.finish_reason for s in req.seqs)
            outputs.append(RequestOutput(req.request_id, req.prompt, req.prompt_token_ids, completions, finished,
                                         prompt_logprobs=prompt_logprobs))
            if finished:
                del self.requests[req.request_id]
        return outputs

    def _next(self, req: _Req, index: int, seq: _Seq) -> CompletionOutput:
        piece = seq.pieces[seq.pos] if seq.pos < len(seq.pieces) else ""
        seq.pos += 1
        token_id = self.tokenizer._id(piece.strip() or "<eos>")
        text = piece
        params = req.params
        if piece.strip() in (params.stop or []):
            text, seq.finish_reason = "", "stop"
        elif seq.pos >= len(seq.pieces):
            seq.finish_reason = "stop"
        elif params.max_tokens is not None and seq.pos >= params.max_tokens:
            seq.finish_reason = "length"
        logprobs = None
        if params.logprobs is not None:
            logprobs = [{token_id: Logprob(-0.25, 1, piece)}]
        return CompletionOutput(index, text, [token_id], logprobs=logprobs, finish_reason=seq.finish_reason)

    def stats(self) -> dict:
        used = 0
        requests = list(self.requests.values())  # NOTE: read from the event loop's thread
        for req in requests:
            for seq in req.seqs:
                used += -(-(len(req.prompt_token_ids) + seq.pos) // BLOCK_SIZE)
        return {"num_running": sum(len(r.seqs) for r in requests), "num_waiting": 0,
                "kv_blocks_used": used, "kv_blocks_total": self.num_blocks, "num_preemptions": 0}
