"""Rotary position embedding, in place: rotates the first rot_dim dims of every head of query
[T, Hq*D] and key [T, Hkv*D] by the angles of cos_sin_cache[positions[t]] ([cos | sin], rot_dim).

Neox style (HF Llama's rotate_half) pairs dim i with i + rot_dim/2; GPT-J style pairs 2i, 2i+1.
Dims past rot_dim are neither read nor written. Any scaling (llama3, linear) lives in the table.
One program per token rotates all heads of its query and key row.

NOTE: query and key need only a contiguous last dim: views of a fused qkv output are rotated in
that buffer. As in `reference.rotary_embedding`, cos/sin are cast to the query's dtype and each
product and sum is rounded to that dtype; FP fusion is off, since LLVM would otherwise fold those
roundings into FMAs. bf16/fp16 results then match the reference bit for bit (H100).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate(row_ptr, cos, sin, NUM_HEADS: tl.constexpr, HEAD_SIZE: tl.constexpr, HALF: tl.constexpr,
            BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr, IS_NEOX: tl.constexpr):
    heads = tl.arange(0, BLOCK_H)[:, None]
    if IS_NEOX:
        dims = tl.arange(0, BLOCK_R)[None, :]
        mask = (heads < NUM_HEADS) & (dims < HALF)
        ptr1 = row_ptr + heads * HEAD_SIZE + dims
        x1 = tl.load(ptr1, mask=mask)
        x2 = tl.load(ptr1 + HALF, mask=mask)
    else:
        # NOTE: GPT-J pairs are adjacent: load [H, 2R] contiguously and split the pairs in registers.
        dims = tl.arange(0, 2 * BLOCK_R)[None, :]
        mask = (heads < NUM_HEADS) & (dims < 2 * HALF)
        ptr1 = row_ptr + heads * HEAD_SIZE + dims
        x1, x2 = tl.split(tl.reshape(tl.load(ptr1, mask=mask), [BLOCK_H, BLOCK_R, 2]))
    dtype = x1.dtype
    x1 = x1.to(tl.float32)
    x2 = x2.to(tl.float32)
    o1 = (x1 * cos).to(dtype).to(tl.float32) - (x2 * sin).to(dtype).to(tl.float32)
    o2 = (x2 * cos).to(dtype).to(tl.float32) + (x1 * sin).to(dtype).to(tl.float32)
    if IS_NEOX:
        tl.store(ptr1, o1.to(dtype), mask=mask)
        tl.store(ptr1 + HALF, o2.to(dtype), mask=mask)
    else:
        tl.store(ptr1, tl.reshape(tl.join(o1, o2), [BLOCK_H, 2 * BLOCK_R]).to(dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    positions_ptr, query_ptr, key_ptr, cache_ptr,
    query_stride, key_stride, cache_stride,
    NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_SIZE: tl.constexpr, HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr, BLOCK_R: tl.constexpr, IS_NEOX: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token)
    r = tl.arange(0, BLOCK_R)
    cos_ptr = cache_ptr + position * cache_stride + r
    dtype = query_ptr.dtype.element_ty
    cos = tl.load(cos_ptr, mask=r < HALF, other=0.0).to(dtype).to(tl.float32)[None, :]
    sin = tl.load(cos_ptr + HALF, mask=r < HALF, other=0.0).to(dtype).to(tl.float32)[None, :]
    _rotate(query_ptr + token * query_stride, cos, sin, NUM_Q_HEADS, HEAD_SIZE, HALF, BLOCK_HQ, BLOCK_R, IS_NEOX)
    _rotate(key_ptr + token * key_stride, cos, sin, NUM_KV_HEADS, HEAD_SIZE, HALF, BLOCK_HKV, BLOCK_R, IS_NEOX)


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox_style: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate query [T, Hq*D] and key [T, Hkv*D] in place at positions int64 [T]; returns (query, key)."""
    num_tokens = positions.shape[0]
    if num_tokens == 0:
        return query, key
    half = cos_sin_cache.shape[-1] // 2
    num_q_heads, num_kv_heads = query.shape[-1] // head_size, key.shape[-1] // head_size
    # NOTE: an in-place op must write the caller's storage; the last dims here are always contiguous
    # in practice, so this copy-back path exists only for correctness.
    q = query if query.stride(-1) == 1 else query.contiguous()
    k = key if key.stride(-1) == 1 else key.contiguous()
    cache = cos_sin_cache if cos_sin_cache.stride(-1) == 1 else cos_sin_cache.contiguous()
    block_q, block_r = triton.next_power_of_2(num_q_heads), triton.next_power_of_2(half)
    num_warps = max(1, min(8, block_q * block_r // 512))
    _rotary_kernel[(num_tokens,)](
        positions, q, k, cache, q.stride(0), k.stride(0), cache.stride(0),
        NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=num_kv_heads, HEAD_SIZE=head_size, HALF=half,
        BLOCK_HQ=block_q, BLOCK_HKV=triton.next_power_of_2(num_kv_heads), BLOCK_R=block_r,
        IS_NEOX=is_neox_style, num_warps=num_warps, enable_fp_fusion=False,
    )
    if q is not query:
        query.copy_(q)
    if k is not key:
        key.copy_(k)
    return query, key
