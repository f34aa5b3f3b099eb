"""Paged attention for decode (one query token per sequence), GQA-aware, split-K ("flash decoding").

Invariants:
- kv_cache [2, num_blocks, block_size, Hkv, D] contiguous ([0] keys, [1] values); block_size a
  power of two; D a power of two >= 16. query/out [S, Hq, D] with the last dim contiguous (the other
  strides are free); Hq % Hkv == 0; query head h reads kv head h // (Hq // Hkv).
- Row s is sequence s's only query, at position seq_lens[s] - 1: it sees cache positions
  < seq_lens[s] (the cache already holds this step's key/value). block_table int32 [S, max_blocks]:
  entries past a sequence's last block are padding (any valid id); slots at positions >= seq_lens[s]
  may hold anything, NaN included, so K and V loads there are masked (other=0) and so are scores.
- seq_lens[s] == 0 marks a padding row (CUDA-graph padding): its output is zeros.
- One program = (sequence, kv head, split): the G query heads of the group are the rows of a
  tl.dot (padded to >= 16), so each K/V tile is read once per group. Splits cut the positions into
  partitions of `partition_size` tokens (a multiple of BLOCK_N); each writes a normalized partial
  and its log2-sum-exp to scratch, and `_reduce_kernel` combines them. One split: written directly.
- The launch (num_splits, partition size) is computed on the host from ints only (max_seq_len is an
  upper bound of seq_lens), never from device data, so the call can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

_LOG2E = 1.4426950408889634
_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}
MAX_SPLITS = 64
# Splits are only worth their reduction when each keeps several tiles in flight.
MIN_TILES_PER_SPLIT = 4


@triton.jit
def _decode_kernel(
    q_ptr, kv_ptr, seq_lens_ptr, block_table_ptr, out_ptr, part_out_ptr, part_lse_ptr,
    qk_scale, partition_size, num_splits,
    stride_qs, stride_qh, stride_os, stride_oh, stride_kv, stride_block, stride_slot, stride_bt,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, USE_PARTIALS: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    start = split * partition_size
    if USE_PARTIALS:
        # NOTE: an empty partition writes nothing; the reduction counts the valid ones from seq_len.
        if start >= seq_len:
            return
    end = tl.minimum(start + partition_size, seq_len)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    head = kv_head * GROUP + offs_g
    head_mask = offs_g < GROUP
    q = tl.load(q_ptr + seq.to(tl.int64) * stride_qs + head[:, None] * stride_qh + offs_d[None, :],
                mask=head_mask[:, None], other=0.0).to(DOT_DTYPE)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    k_base = kv_ptr + kv_head * HEAD_DIM
    bt_row = block_table_ptr + seq.to(tl.int64) * stride_bt
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + offs_n
        valid = pos < end
        block_id = tl.load(bt_row + pos // BLOCK_SIZE, mask=valid, other=0)
        slot = block_id.to(tl.int64) * stride_block + (pos % BLOCK_SIZE) * stride_slot
        # NOTE: masked K and V (other=0): a NaN in an unused slot must not reach p @ V.
        k = tl.load(k_base + slot[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(k_base + stride_kv + slot[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0)
        qk = tl.dot(q, tl.trans(k.to(DOT_DTYPE)), input_precision=PRECISION) * qk_scale
        qk = tl.where(valid[None, :], qk, float("-inf"))
        # NOTE: start < seq_len, so the first tile has a valid position: m_new is finite from then on.
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision=PRECISION)
        m_i = m_new

    if USE_PARTIALS:
        part = (seq * NUM_HEADS + head) * num_splits + split
        tl.store(part_out_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc / l_i[:, None],
                 mask=head_mask[:, None])
        tl.store(part_lse_ptr + part, m_i + tl.log2(l_i), mask=head_mask)
    else:
        # NOTE: seq_len == 0 (padding row): the loop ran zero times, acc == 0 and l_i == 0 -> zeros.
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        tl.store(out_ptr + seq.to(tl.int64) * stride_os + head[:, None] * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=head_mask[:, None])


@triton.jit
def _reduce_kernel(
    part_out_ptr, part_lse_ptr, seq_lens_ptr, out_ptr, partition_size, num_splits, stride_os, stride_oh,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    # NOTE: only partitions starting below seq_len were written; the rest of the scratch is garbage.
    num_valid = tl.minimum((seq_len + partition_size - 1) // partition_size, num_splits)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    valid = offs_s < num_valid
    part = (seq * NUM_HEADS + head) * num_splits + offs_s
    lse = tl.load(part_lse_ptr + part, mask=valid, other=float("-inf"))
    m = tl.where(num_valid > 0, tl.max(lse, 0), 0.0)
    weight = tl.exp2(lse - m)  # 0 for invalid partitions
    denom = tl.sum(weight, 0)
    partial = tl.load(part_out_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], mask=valid[:, None], other=0.0)
    # NOTE: a padding row (seq_len == 0) has no valid partition: denom == 0 and the output is zeros.
    out = tl.sum(partial * weight[:, None], 0) / tl.where(denom == 0.0, 1.0, denom)
    tl.store(out_ptr + seq.to(tl.int64) * stride_os + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty))


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of `device` (cached); 132 (an H100) off CUDA, e.g. under the interpreter."""
    if device.type != "cuda":
        return 132
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


def dot_types(dtype: torch.dtype, kernel) -> tuple[tl.dtype, str]:
    """(operand dtype, input_precision) of the kernels' tl.dot: the query's dtype; float32 dots in
    "ieee" (no tf32). NOTE: Triton's interpreter multiplies bf16 dot operands as raw uint16 (3.9),
    so under it bf16 operands are upcast to float32; compiled kernels never take that branch."""
    interpreted = isinstance(kernel, InterpretedFunction)
    dot_dtype = tl.float32 if dtype == torch.float32 or (interpreted and dtype == torch.bfloat16) else _TL_DTYPES[dtype]
    return dot_dtype, "ieee" if dot_dtype == tl.float32 else "tf32"  # tf32 is ignored for 16-bit operands


def decode_config(head_dim: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages) for a head size and dtype."""
    if head_dim * dtype.itemsize <= 256:  # bf16/fp16 up to D=128: 16 KiB K + 16 KiB V per stage
        return 64, 4, 3
    return 32, 4, 2  # fp32 D=128, 16-bit D=256: keep shared memory per stage at 16 KiB each


def choose_num_splits(
    num_seqs: int, num_kv_heads: int, max_seq_len: int, num_sms: int = 132, block_n: int = 64,
    waves: int = 2,
) -> tuple[int, int]:
    """(num_splits, partition_size) from host ints only: enough (sequence, kv head, split) programs
    for about `waves` programs per SM, each partition a multiple of block_n and at least
    MIN_TILES_PER_SPLIT tiles long."""
    tiles = max(1, math.ceil(max_seq_len / block_n))
    programs = max(1, num_seqs * num_kv_heads)
    splits = min(math.ceil(waves * num_sms / programs), max(1, tiles // MIN_TILES_PER_SPLIT), MAX_SPLITS)
    tiles_per_split = math.ceil(tiles / splits)
    return math.ceil(tiles / tiles_per_split), tiles_per_split * block_n


def paged_attention_decode(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    scale: float,
    max_seq_len: int,
    out: torch.Tensor | None = None,
    *,
    num_splits: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Decode attention: query [S, Hq, D] (one token per sequence) -> out [S, Hq, D] (query's dtype).

    num_splits / block_n override the launch choice (tests); the partition size is then
    ceil(max_seq_len / num_splits) rounded up to a multiple of block_n.
    """
    num_seqs, num_heads, head_dim = query.shape
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_seqs == 0:
        return out
    cfg_block_n, num_warps, num_stages = decode_config(head_dim, query.dtype)
    block_n = block_n or cfg_block_n
    if num_splits is None:
        num_splits, partition_size = choose_num_splits(
            num_seqs, num_kv_heads, max_seq_len, num_sms(query.device), block_n)
    else:
        partition_size = math.ceil(max(1, math.ceil(max_seq_len / num_splits)) / block_n) * block_n
    use_partials = num_splits > 1
    if use_partials:
        part_out = torch.empty(num_seqs, num_heads, num_splits, head_dim, dtype=torch.float32, device=query.device)
        part_lse = torch.empty(num_seqs, num_heads, num_splits, dtype=torch.float32, device=query.device)
    else:
        part_out = part_lse = out  # unused
    dot_dtype, precision = dot_types(query.dtype, _decode_kernel)
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        query, kv_cache, seq_lens, block_table, out, part_out, part_lse,
        scale * _LOG2E, partition_size, num_splits,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), block_table.stride(0),
        NUM_HEADS=num_heads, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size, BLOCK_N=block_n, USE_PARTIALS=use_partials, DOT_DTYPE=dot_dtype, PRECISION=precision,
        num_warps=num_warps, num_stages=num_stages,
    )
    if use_partials:
        _reduce_kernel[(num_seqs, num_heads)](
            part_out, part_lse, seq_lens, out, partition_size, num_splits, out.stride(0), out.stride(1),
            NUM_HEADS=num_heads, HEAD_DIM=head_dim, SPLITS_PAD=triton.next_power_of_2(num_splits), num_warps=4,
        )
    return out
