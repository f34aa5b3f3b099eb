"""Decode steps replayed from CUDA graphs captured once, at start, for a fixed set of batch sizes.

A decode step launches a few hundred small kernels; replaying them as one graph removes the
host's launch cost, which at batch 1 is most of the step. A batch of n sequences runs the graph
of the smallest captured size >= n; the extra rows are padding.

NOTE (invariants the captured kernels rely on):
- Every input lives in a static buffer owned here; a step copies its n rows in and marks rows
  n..size as padding: slot -1 (the KV store writes nothing) and seq_len 0 (attention writes
  zeros). Padding rows' token ids, positions and block tables keep stale but valid values.
- Attention was captured with max_seq_len = max_model_len as its bound, so the split-K layout
  fits every sequence the engine can hold.
- All graphs share one memory pool and their outputs may alias: a step's logits must be
  consumed before the next replay.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from localllm.forward_context import AttentionMetadata, ForwardContext, set_forward_context

logger = logging.getLogger(__name__)


def capture_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to 64, every 16 up to 256, every 32 beyond; the largest is
    max_batch_size itself so that no batch the scheduler can form falls back to eager."""
    sizes = [s for s in (1, 2, 4) if s < max_batch_size]
    size, step = 8, 8
    while size < max_batch_size:
        sizes.append(size)
        step = 8 if size < 64 else 16 if size < 256 else 32
        size += step
    sizes.append(max_batch_size)
    return sizes


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor  # [size, vocab] float32, in the shared pool


class DecodeCUDAGraphs:
    """run(input_ids, positions, slot_mapping, seq_lens, block_table) -> logits [n, vocab] for a
    decode-only batch of n <= max_batch_size sequences (one token each)."""

    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[torch.Tensor],
        max_batch_size: int,
        max_model_len: int,
        block_size: int,
        device: torch.device,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.max_model_len = max_model_len
        self.sizes = capture_sizes(max_batch_size)
        self.max_batch_size = self.sizes[-1]
        size = self.max_batch_size
        max_blocks = -(-max_model_len // block_size)
        self.input_ids = torch.zeros(size, dtype=torch.int64, device=device)
        self.positions = torch.zeros(size, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((size,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.zeros(size, dtype=torch.int32, device=device)
        self.block_table = torch.zeros(size, max_blocks, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(size + 1, dtype=torch.int32, device=device)
        self._captured: dict[int, _Captured] = {}
        self.capture_seconds = 0.0

    def capture(self) -> float:
        """Capture every size, largest first (later graphs reuse the first one's pool). Returns
        the seconds it took; the caller tells the user."""
        started = time.monotonic()
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):
            # NOTE: an eager run of each size first, on a side stream: it compiles any Triton
            # variant this size needs and lets lazy initializations (cuBLAS handles and
            # workspaces) happen outside the capture.
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._forward(size)
            torch.cuda.current_stream().wait_stream(stream)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = self._forward(size)
            self._captured[size] = _Captured(graph, logits)
        torch.cuda.synchronize()
        self.capture_seconds = time.monotonic() - started
        return self.capture_seconds

    def _forward(self, size: int) -> torch.Tensor:
        metadata = AttentionMetadata(
            num_seqs=size,
            num_tokens=size,
            query_start_loc=self.query_start_loc[: size + 1],
            seq_lens=self.seq_lens[:size],
            block_table=self.block_table[:size],
            slot_mapping=self.slot_mapping[:size],
            max_query_len=1,
            max_seq_len=self.max_model_len,
            query_start_loc_cpu=list(range(size + 1)),
            seq_lens_cpu=[self.max_model_len] * size,
        )
        with set_forward_context(ForwardContext(attn_metadata=metadata, kv_caches=self.kv_caches)):
            hidden = self.model(self.input_ids[:size], self.positions[:size])
        return self.model.compute_logits(hidden)

    def can_run(self, num_seqs: int) -> bool:
        return num_seqs <= self.max_batch_size and bool(self._captured)

    def run(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slot_mapping: torch.Tensor,
        seq_lens: torch.Tensor,
        block_table: torch.Tensor,
    ) -> torch.Tensor:
        n = input_ids.shape[0]
        size = next(s for s in self.sizes if s >= n)
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(slot_mapping)
        self.seq_lens[:n].copy_(seq_lens)
        self.block_table[:n, : block_table.shape[1]].copy_(block_table)
        if size > n:
            self.slot_mapping[n:size].fill_(-1)
            self.seq_lens[n:size].fill_(0)
        captured = self._captured[size]
        captured.graph.replay()
        return captured.logits[:n]
