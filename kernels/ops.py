"""Kernel entry points: check shapes, dtypes and devices, then dispatch.

Every op dispatches to `reference` (pure torch) today; a Triton kernel takes over per op on CUDA
once it lands in `triton/`. Checks read only tensor metadata: nothing here syncs with the device.
"""

from __future__ import annotations

import torch

from . import reference


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_kv_cache(kv_cache: torch.Tensor) -> None:
    _check(
        kv_cache.dim() == 5 and kv_cache.shape[0] == 2,
        f"kv_cache must be [2, num_blocks, block_size, num_kv_heads, head_size], got {tuple(kv_cache.shape)}",
    )
    _check(kv_cache.is_contiguous(), "kv_cache must be contiguous")


def store_kv_cache(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write key/value [T, Hkv, D] into kv_cache [2, num_blocks, block_size, Hkv, D] at
    slot_mapping int64 [T] (slot = block_id * block_size + offset), in place."""
    _check_kv_cache(kv_cache)
    num_kv_heads, head_size = kv_cache.shape[3:]
    _check(key.dim() == 3 and tuple(key.shape[1:]) == (num_kv_heads, head_size),
           f"key must be [T, {num_kv_heads}, {head_size}], got {tuple(key.shape)}")
    _check(value.shape == key.shape, f"value {tuple(value.shape)} must match key {tuple(key.shape)}")
    _check(slot_mapping.dtype == torch.int64 and slot_mapping.shape == (key.shape[0],),
           f"slot_mapping must be int64 [{key.shape[0]}], got {slot_mapping.dtype} {tuple(slot_mapping.shape)}")
    _check(key.device == kv_cache.device == slot_mapping.device, "key, kv_cache and slot_mapping must share a device")
    reference.store_kv_cache(key, value, kv_cache, slot_mapping)


def paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    scale: float,
    max_query_len: int,
    max_seq_len: int,
    query_start_loc_cpu: list[int],
    seq_lens_cpu: list[int],
) -> torch.Tensor:
    """Causal attention of query [T, Hq, D] over the paged cache -> [T, Hq, D].

    Semantics: localllm.forward_context.AttentionMetadata. block_table entries past a sequence's
    last block are padding: any valid block id (the runner uses 0); they are masked out.
    """
    _check_kv_cache(kv_cache)
    num_kv_heads, head_size = kv_cache.shape[3:]
    _check(query.dim() == 3 and query.shape[2] == head_size,
           f"query must be [T, Hq, {head_size}], got {tuple(query.shape)}")
    _check(query.shape[1] % num_kv_heads == 0,
           f"query heads ({query.shape[1]}) must be a multiple of kv heads ({num_kv_heads})")
    num_seqs = len(seq_lens_cpu)
    _check(len(query_start_loc_cpu) == num_seqs + 1, "query_start_loc_cpu must have num_seqs + 1 entries")
    _check(query_start_loc_cpu[-1] == query.shape[0],
           f"query_start_loc_cpu[-1] ({query_start_loc_cpu[-1]}) must equal the number of tokens ({query.shape[0]})")
    _check(query_start_loc.dtype == torch.int32 and query_start_loc.shape == (num_seqs + 1,),
           f"query_start_loc must be int32 [{num_seqs + 1}]")
    _check(seq_lens.dtype == torch.int32 and seq_lens.shape == (num_seqs,), f"seq_lens must be int32 [{num_seqs}]")
    _check(block_table.dtype == torch.int32 and block_table.dim() == 2 and block_table.shape[0] == num_seqs,
           f"block_table must be int32 [{num_seqs}, max_blocks], got {block_table.dtype} {tuple(block_table.shape)}")
    _check(block_table.shape[1] * kv_cache.shape[2] >= max_seq_len,
           f"block_table has {block_table.shape[1]} blocks per row, too few for max_seq_len {max_seq_len}")
    _check(max_query_len >= 1 and max_seq_len >= max_query_len, "need 1 <= max_query_len <= max_seq_len")
    _check(max_query_len > 1 or query.shape[0] == num_seqs, "a decode-only batch has one token per sequence")
    return reference.paged_attention(
        query, kv_cache, query_start_loc, seq_lens, block_table, scale,
        max_query_len, max_seq_len, query_start_loc_cpu, seq_lens_cpu,
    )


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of x [..., H] with weight [H]; with residual, fused add first and returns
    (out, new_residual) where new_residual = x + residual."""
    _check(weight.dim() == 1 and x.shape[-1] == weight.shape[0],
           f"weight [{weight.shape[0] if weight.dim() else '?'}] must match x's last dim {x.shape[-1]}")
    _check(residual is None or residual.shape == x.shape,
           f"residual {None if residual is None else tuple(residual.shape)} must match x {tuple(x.shape)}")
    return reference.rms_norm(x, weight, eps, residual)


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox_style: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding of query [T, Hq*D] and key [T, Hkv*D] at positions int64 [T];
    cos_sin_cache [max_position, rot_dim] (cos then sin halves). Returns (query, key)."""
    num_tokens = positions.shape[0]
    _check(positions.dim() == 1 and positions.dtype == torch.int64, "positions must be int64 [T]")
    _check(query.dim() == 2 and query.shape[0] == num_tokens and query.shape[1] % head_size == 0,
           f"query must be [{num_tokens}, Hq * {head_size}], got {tuple(query.shape)}")
    _check(key.dim() == 2 and key.shape[0] == num_tokens and key.shape[1] % head_size == 0,
           f"key must be [{num_tokens}, Hkv * {head_size}], got {tuple(key.shape)}")
    rot_dim = cos_sin_cache.shape[-1]
    _check(cos_sin_cache.dim() == 2 and rot_dim % 2 == 0 and rot_dim <= head_size,
           f"cos_sin_cache must be [max_position, rot_dim <= {head_size}], got {tuple(cos_sin_cache.shape)}")
    return reference.rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox_style)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> silu(x[..., :I]) * x[..., I:] of shape [..., I]."""
    _check(x.shape[-1] % 2 == 0, f"last dim must be even, got {x.shape[-1]}")
    return reference.silu_and_mul(x)
