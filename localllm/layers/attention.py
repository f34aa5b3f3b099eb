"""Paged attention layer: writes this step's keys/values into its layer's KV cache, then attends.

The step's metadata and the caches come from the forward context (set once per step by the model
runner), not from arguments: the model's forward signature stays (input_ids, positions).
"""

from __future__ import annotations

import torch
from torch import nn

from localllm.forward_context import get_forward_context
from localllm.kernels import ops


class Attention(nn.Module):
    """forward(q [T, Hq*D], k [T, Hkv*D], v [T, Hkv*D]) -> [T, Hq*D]; uses kv_caches[layer_idx]."""

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int, layer_idx: int):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = scale
        self.num_kv_heads = num_kv_heads
        self.layer_idx = layer_idx

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        context = get_forward_context()
        metadata = context.attn_metadata
        num_tokens = q.shape[0]
        if metadata is None:
            # NOTE: a dummy run (warm-up, memory profiling) has no cache to read: shapes only.
            return torch.zeros_like(q)
        kv_cache = context.kv_caches[self.layer_idx]
        key = k.view(num_tokens, self.num_kv_heads, self.head_size)
        value = v.view(num_tokens, self.num_kv_heads, self.head_size)
        ops.store_kv_cache(key, value, kv_cache, metadata.slot_mapping)
        out = ops.paged_attention(
            q.view(num_tokens, self.num_heads, self.head_size),
            kv_cache,
            metadata.query_start_loc,
            metadata.seq_lens,
            metadata.block_table,
            self.scale,
            metadata.max_query_len,
            metadata.max_seq_len,
            metadata.query_start_loc_cpu,
            metadata.seq_lens_cpu,
        )
        return out.view(num_tokens, self.num_heads * self.head_size)
