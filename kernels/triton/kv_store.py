"""Store this step's keys and values into the paged KV cache.

kv_cache[0, slot // block_size, slot % block_size] = key[t] and kv_cache[1, ...] = value[t] for
each token t with slot = slot_mapping[t], cast to the cache's dtype. One program per token copies
all Hkv * D elements of its key and value.

NOTE: a negative slot marks a padding token (CUDA-graph padding rows use -1): nothing is written.
NOTE: kv_cache is contiguous, so a slot is a flat [Hkv, D] row of kv_cache.view(2, num_slots, Hkv, D);
key/value need only a contiguous last dim (views of a fused qkv output are fine).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _store_kv_cache_kernel(
    key_ptr, value_ptr, cache_ptr, slot_ptr,
    key_stride_t, key_stride_h, value_stride_t, value_stride_h,
    value_cache_offset,
    NUM_KV_HEADS: tl.constexpr, HEAD_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token)
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    num_heads = tl.where(slot >= 0, NUM_KV_HEADS, 0)
    mask = (heads < num_heads) & (dims < HEAD_SIZE)

    key = tl.load(key_ptr + token * key_stride_t + heads * key_stride_h + dims, mask=mask)
    value = tl.load(value_ptr + token * value_stride_t + heads * value_stride_h + dims, mask=mask)

    dst = cache_ptr + slot * (NUM_KV_HEADS * HEAD_SIZE) + heads * HEAD_SIZE + dims
    tl.store(dst, key.to(cache_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + value_cache_offset, value.to(cache_ptr.dtype.element_ty), mask=mask)


def store_kv_cache(
    key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write key/value [T, Hkv, D] into kv_cache [2, num_blocks, block_size, Hkv, D] at slot_mapping
    int64 [T], in place; negative slots are skipped."""
    num_tokens = key.shape[0]
    _, num_blocks, block_size, num_kv_heads, head_size = kv_cache.shape
    if num_tokens == 0:
        return
    if key.stride(-1) != 1:
        key = key.contiguous()
    if value.stride(-1) != 1:
        value = value.contiguous()
    block_h = triton.next_power_of_2(num_kv_heads)
    block_d = triton.next_power_of_2(head_size)
    # NOTE: ~8 elements (16 bytes of bf16) per thread per tensor, 1 to 8 warps.
    num_warps = max(1, min(8, block_h * block_d // 256))
    _store_kv_cache_kernel[(num_tokens,)](
        key, value, kv_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        num_blocks * block_size * num_kv_heads * head_size,
        NUM_KV_HEADS=num_kv_heads, HEAD_SIZE=head_size,
        BLOCK_H=block_h, BLOCK_D=block_d,
        num_warps=num_warps,
    )
