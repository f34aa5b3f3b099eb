"""A minimal stand-in for the model runner: owns the paged KV caches, hands out blocks, builds
AttentionMetadata for a ragged batch, and runs one forward step. Tests only."""

from __future__ import annotations

import torch

from localllm.forward_context import AttentionMetadata, ForwardContext, set_forward_context
from localllm.models.registry import kv_cache_spec


class PagedDriver:
    def __init__(self, model, hf_config, num_blocks: int = 64, block_size: int = 16, dtype=torch.float32):
        num_layers, num_kv_heads, head_dim = kv_cache_spec(hf_config)
        self.model = model
        self.block_size = block_size
        # NaN-poisoned: attention must never read a slot this run did not write.
        self.kv_caches = [
            torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype)
            for _ in range(num_layers)
        ]
        # Hand blocks out in a scrambled order so sequences never sit in contiguous blocks.
        self.free_blocks = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(0)).tolist()
        self.blocks: dict[object, list[int]] = {}
        self.lengths: dict[object, int] = {}

    def _slot(self, seq_id, position: int) -> int:
        blocks = self.blocks.setdefault(seq_id, [])
        while len(blocks) * self.block_size <= position:
            blocks.append(self.free_blocks.pop())
        return blocks[position // self.block_size] * self.block_size + position % self.block_size

    @torch.inference_mode()
    def step(self, batch: list[tuple[object, list[int]]]) -> torch.Tensor:
        """batch: (seq_id, new token ids) per sequence. Returns float32 logits [num_seqs, vocab] of
        each sequence's last new token."""
        input_ids, positions, slots, starts, seq_lens = [], [], [], [0], []
        for seq_id, tokens in batch:
            start = self.lengths.get(seq_id, 0)
            for j, token in enumerate(tokens):
                input_ids.append(token)
                positions.append(start + j)
                slots.append(self._slot(seq_id, start + j))
            self.lengths[seq_id] = start + len(tokens)
            starts.append(starts[-1] + len(tokens))
            seq_lens.append(self.lengths[seq_id])
        max_blocks = max(len(self.blocks[s]) for s, _ in batch)
        table = torch.zeros(len(batch), max_blocks, dtype=torch.int32)
        for i, (seq_id, _) in enumerate(batch):
            table[i, : len(self.blocks[seq_id])] = torch.tensor(self.blocks[seq_id], dtype=torch.int32)
        query_lens = [len(t) for _, t in batch]
        metadata = AttentionMetadata(
            num_seqs=len(batch),
            num_tokens=len(input_ids),
            query_start_loc=torch.tensor(starts, dtype=torch.int32),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            block_table=table,
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=starts,
            seq_lens_cpu=seq_lens,
        )
        with set_forward_context(ForwardContext(metadata, self.kv_caches)):
            hidden = self.model(torch.tensor(input_ids, dtype=torch.int64), torch.tensor(positions, dtype=torch.int64))
        last = torch.tensor(starts[1:], dtype=torch.int64) - 1
        return self.model.compute_logits(hidden[last])

    def generate(self, seq_id, prompt: list[int], max_new_tokens: int, chunk: int | None = None) -> list[int]:
        """Greedy: prefill (in chunks of `chunk` tokens if given), then one token per decode step."""
        chunk = chunk or len(prompt)
        for i in range(0, len(prompt), chunk):
            logits = self.step([(seq_id, prompt[i : i + chunk])])
        out = []
        for _ in range(max_new_tokens):
            token = int(logits[0].argmax())
            out.append(token)
            logits = self.step([(seq_id, [token])])
        return out
