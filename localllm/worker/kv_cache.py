"""Sizing and allocating the paged KV cache: one tensor per decoder layer,
[2, num_blocks, block_size, num_kv_heads, head_dim] (K then V)."""

from __future__ import annotations

import torch

from localllm.config import CacheConfig


def kv_bytes_per_block(num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype) -> int:
    element_size = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * block_size * num_kv_heads * head_dim * element_size


def choose_num_blocks(
    cache_config: CacheConfig,
    bytes_per_block: int,
    device: torch.device,
    max_useful_blocks: int,
    activation_reserve_bytes: int = 0,
) -> int:
    """An explicit cap wins; otherwise the memory budget for the device, never more blocks than
    max_num_seqs full-length sequences could use."""
    if cache_config.num_blocks is not None:
        return cache_config.num_blocks
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        used_by_others = total - free
        budget = total * cache_config.gpu_memory_utilization - used_by_others - activation_reserve_bytes
    else:
        budget = cache_config.cpu_kv_cache_gib * (1 << 30)
    num_blocks = int(budget // bytes_per_block)
    if num_blocks < 1:
        raise RuntimeError(
            f"no memory left for the KV cache on {device} (one block needs {bytes_per_block} bytes); "
            "use a smaller model, a quantized one, or a lower max_model_len"
        )
    return min(num_blocks, max_useful_blocks)


def allocate_kv_caches(
    num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor]:
    # NOTE: uninitialized on purpose (zeroing gigabytes takes seconds): attention reads only
    # slots below each sequence's length, all written before they are read.
    return [
        torch.empty(2, num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype, device=device)
        for _ in range(num_layers)
    ]
