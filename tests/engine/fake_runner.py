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


class FakeRunner:
    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.slots: dict[int, int] = {}
        self.steps = 0
        self.batch_sizes: list[int] = []
        self.tokens_per_step: list[int] = []

    def execute_model(self, so: SchedulerOutput) -> ModelRunnerOutput:
        self.steps += 1
        self.batch_sizes.append(len(so.requests))
        self.tokens_per_step.append(so.total_num_scheduled_tokens)
        bs = self.block_size
        # Write every sequence's new tokens first (as each layer does), then read.
        for request, n, blocks in zip(so.requests, so.num_scheduled_tokens, so.block_ids):
            start = request.num_computed_tokens
            assert len(blocks) * bs >= start + n, "block table too short for the scheduled tokens"
            for p in range(start, start + n):
                self.slots[blocks[p // bs] * bs + p % bs] = request.all_token_ids[p]
        sampled = []
        for request, n, blocks in zip(so.requests, so.num_scheduled_tokens, so.block_ids):
            end = request.num_computed_tokens + n
            seen = [self.slots.get(blocks[p // bs] * bs + p % bs) for p in range(end)]
            assert seen == request.all_token_ids[:end], f"{request.request_id}: cache holds other tokens"
            sampled.append(next_token(request.all_token_ids) if end == request.num_tokens else None)
        return ModelRunnerOutput(
            req_ids=[r.request_id for r in so.requests], sampled_token_ids=sampled, logprobs=[None] * len(sampled)
        )
