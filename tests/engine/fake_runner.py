"""A model-free runner for scheduler tests.

It keeps a token-level "KV cache" (slot -> token id) and, every step, writes the step's tokens
into their slots and then reads each sequence back through its block table: any block-table,
prefix-sharing or preemption bug shows up as a sequence whose cache does not hold its own
tokens. The next token is a fixed function of the whole sequence, like a greedy model.
"""

from __future__ import annotations

from localllm.outputs import ModelRunnerOutput, SchedulerOutput

VOCAB = 1000


def next_token(tokens: list[int]) -> int:
    h = 0
    for t in tokens:
        h = (h * 31 + t + 7) % 1_000_003
    return h % VOCAB


class FakeLaunched:
    def __init__(self, req_ids: list[str], sampled: dict[str, int]) -> None:
        self.req_ids = req_ids
        self.sampled = sampled  # request id -> token, for rows that sample


class FakeRunner:
    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.slots: dict[int, int] = {}
        self.steps = 0
        self.batch_sizes: list[int] = []
        self.tokens_per_step: list[int] = []
        self.num_ahead = 0  # steps launched with a step in flight

    def execute_model(self, so: SchedulerOutput) -> ModelRunnerOutput:
        return self.collect(self.launch(so))

    def launch(self, so: SchedulerOutput, in_flight: FakeLaunched | None = None) -> FakeLaunched:
        """Like ModelRunner.launch: a row's last token may be the in-flight step's sample."""
        self.steps += 1
        self.num_ahead += in_flight is not None
        self.batch_sizes.append(len(so.requests))
        self.tokens_per_step.append(so.total_num_scheduled_tokens)
        bs = self.block_size
        rows = []
        for request, start, n, blocks in zip(so.requests, so.num_computed_tokens, so.num_scheduled_tokens,
                                             so.block_ids):
            tokens = list(request.all_token_ids)
            if start + n > len(tokens):
                assert start + n == len(tokens) + 1, "more than one token in flight"
                tokens.append(in_flight.sampled[request.request_id])
            rows.append((request, start, n, blocks, tokens))
        # Write every sequence's new tokens first (as each layer does), then read.
        for request, start, n, blocks, tokens in rows:
            assert len(blocks) * bs >= start + n, "block table too short for the scheduled tokens"
            for p in range(start, start + n):
                self.slots[blocks[p // bs] * bs + p % bs] = tokens[p]
        sampled = {}
        for request, start, n, blocks, tokens in rows:
            end = start + n
            seen = [self.slots.get(blocks[p // bs] * bs + p % bs) for p in range(end)]
            assert seen == tokens[:end], f"{request.request_id}: cache holds other tokens"
            if end >= request.num_tokens:
                sampled[request.request_id] = next_token(tokens)
        return FakeLaunched([r.request_id for r in so.requests], sampled)

    def collect(self, launched: FakeLaunched) -> ModelRunnerOutput:
        tokens = [launched.sampled.get(i) for i in launched.req_ids]
        return ModelRunnerOutput(req_ids=launched.req_ids, sampled_token_ids=tokens, logprobs=[None] * len(tokens))
