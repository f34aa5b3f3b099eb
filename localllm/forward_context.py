"""Attention metadata: built once per step by the model runner, read by every attention layer
through a scoped context (not a module global that outlives the step)."""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class AttentionMetadata:
    """A packed ragged batch: the step's tokens of all sequences concatenated, no padding.

    Sequence i owns query rows query_start_loc[i]:query_start_loc[i+1]; its cache holds
    seq_lens[i] tokens after this step, of which the last (query_start_loc[i+1] -
    query_start_loc[i]) are this step's. Query token j of sequence i sits at position
    seq_lens[i] - query_len_i + j and attends to cache positions <= its own (causal).
    """

    num_seqs: int
    num_tokens: int
    query_start_loc: torch.Tensor  # int32 [num_seqs + 1], on the model's device
    seq_lens: torch.Tensor  # int32 [num_seqs]
    block_table: torch.Tensor  # int32 [num_seqs, max_num_blocks_per_seq]
    slot_mapping: torch.Tensor  # int64 [num_tokens]: block_id * block_size + offset
    max_query_len: int
    max_seq_len: int
    # Host copies, so CPU reference paths loop without device syncs.
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1


@dataclass
class ForwardContext:
    attn_metadata: AttentionMetadata | None
    # One tensor per decoder layer: [2, num_blocks, block_size, num_kv_heads, head_dim].
    kv_caches: list[torch.Tensor]


_current: contextvars.ContextVar[ForwardContext | None] = contextvars.ContextVar(
    "localllm_forward_context", default=None
)


@contextlib.contextmanager
def set_forward_context(context: ForwardContext) -> Iterator[ForwardContext]:
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def get_forward_context() -> ForwardContext:
    context = _current.get()
    if context is None:
        raise RuntimeError("attention layers run only inside set_forward_context(...)")
    return context
