"""The bandwidth floor of decode.

A decode step of a batch must read every weight once (the embedding table only when it doubles
as the LM head: otherwise one row per token) plus the KV cache of every sequence in the batch.
Over the memory bandwidth that is the least time a step can take:

    floor seconds per step = (weight bytes + batch x context x KV bytes per token) / bandwidth

and the fraction of the floor a run reached is floor time / measured time per output token.
"""

from __future__ import annotations

from typing import Iterable

# Tables that are not weights a step streams: rotary cos/sin caches (one row read per token), and
# the 8-bit LM head's codes and scales (only its top candidates' rows are read again).
_NOT_STREAMED = ("cos_sin_cache", "rotary_emb", "inv_freq", "lm_head.codes", "lm_head.group_scales")


def weight_bytes_read(named_tensors: Iterable[tuple[str, object]], embedding_is_lm_head: bool) -> int:
    """Bytes of the tensors a decode step reads, from (name, tensor) pairs (each tensor once)."""
    seen: set[int] = set()
    total = 0
    for name, tensor in named_tensors:
        if any(part in name for part in _NOT_STREAMED):
            continue
        if "embed_tokens" in name and not embedding_is_lm_head:
            continue
        key = tensor.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, element_size: int) -> int:
    """K and V of one token over every layer."""
    return 2 * num_layers * num_kv_heads * head_dim * element_size


def decode_floor(decode_bytes: dict, bandwidth: dict, batch_size: int, mean_context: float,
                 seconds_per_output_token: float | None) -> dict:
    """The floor for a decode step of `batch_size` sequences at `mean_context` tokens, and the
    fraction of it reached by a measured time per output token (per sequence)."""
    weights = decode_bytes["weight_bytes"]
    kv = decode_bytes["kv_bytes_per_token"] * batch_size * mean_context
    floor_s = (weights + kv) / (bandwidth["GBps"] * 1e9)
    out = {
        "weight_bytes_per_step": weights,
        "kv_bytes_per_step": int(kv),
        "batch_size": batch_size,
        "mean_context": mean_context,
        "memory_bandwidth_GBps": bandwidth["GBps"],
        "bandwidth_source": bandwidth["method"],
        "floor_seconds_per_step": floor_s,
        "floor_output_tok_s": batch_size / floor_s,
    }
    if seconds_per_output_token:
        out["fraction_of_floor"] = floor_s / seconds_per_output_token
    return out
