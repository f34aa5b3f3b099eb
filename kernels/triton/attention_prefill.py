"""Paged attention for chunked prefill and mixed batches (any query lengths, 1 included).

Invariants:
- kv_cache [2, num_blocks, block_size, Hkv, D] contiguous ([0] keys, [1] values); block_size a
  power of two; D a power of two >= 16. query/out [T, Hq, D] with the last dim contiguous (token
  and head strides are free); Hq % Hkv == 0; query head h reads kv head h // G, G = Hq // Hkv.
- A packed ragged batch, no padding: sequence i owns query rows query_start_loc[i]:query_start_loc[i+1];
  its cache holds seq_lens[i] tokens including this chunk's (already written), so its query j sits at
  position ctx_i + j, ctx_i = seq_lens[i] - query_len_i, and sees cache positions <= its own. All keys
  and values, cached context and chunk alike, are read from the paged cache.
- block_table entries past a sequence's last block are padding and slots past seq_lens[i] may hold
  NaN: only positions a row may see are loaded unmasked; on the diagonal, K and V loads are masked.
- One program = a tile of BLOCK_Q query tokens of one sequence x the G query heads of one kv head:
  BLOCK_M = BLOCK_Q * G rows (row r is token r // G, head r % G), so K/V tiles are shared by the group.
- Grid (T // BLOCK_Q + S, Hkv) from host ints: sequence i's q tiles start at index
  query_start_loc[i] // BLOCK_Q + i (strictly increasing in i, an upper bound on the tiles it needs);
  a program finds its sequence by binary search over query_start_loc on the device and exits if its
  tile lies past its sequence's rows. Nothing is read back to the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attention_decode import dot_types

_LOG2E = 1.4426950408889634
_INT32_OFFSETS_BELOW = 2**31  # cache elements


@triton.jit
def _find_seq(query_start_loc_ptr, num_seqs, tile, BLOCK_Q: tl.constexpr):
    """Largest i with query_start_loc[i] // BLOCK_Q + i <= tile (binary search)."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid <= tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _kv_slots(bt_row, n0, kv_end, stride_block, stride_slot, offs_n,
              BLOCK_SIZE: tl.constexpr, OFFSET_DTYPE: tl.constexpr):
    """Element offsets of the cache slots of positions n0 + offs_n (block 0 at and past kv_end)."""
    pos = n0 + offs_n
    block_id = tl.load(bt_row + pos // BLOCK_SIZE, mask=pos < kv_end, other=0)
    return block_id.to(OFFSET_DTYPE) * stride_block + (pos % BLOCK_SIZE) * stride_slot


@triton.jit
def _attend_tile(q, acc, m_i, l_i, slot, k_base, v_base, n0, kv_end, q_pos, qk_scale, offs_n, offs_d,
                 MASKED: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    if MASKED:
        valid = (n0 + offs_n) < kv_end
        # NOTE: masked K and V (other=0): a NaN past seq_len must not reach p @ V.
        k = tl.load(k_base + slot[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_base + slot[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0)
    else:
        k = tl.load(k_base + slot[:, None] + offs_d[None, :])
        v = tl.load(v_base + slot[:, None] + offs_d[None, :])
    qk = tl.dot(q, tl.trans(k.to(DOT_DTYPE)), input_precision=PRECISION)
    if MASKED:
        qk = tl.where((n0 + offs_n)[None, :] <= q_pos[:, None], qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(DOT_DTYPE), v.to(DOT_DTYPE), acc * alpha[:, None], input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _attend_range(q, acc, m_i, l_i, slot, bt_row, k_base, v_base, n_start, n_end, kv_end, q_pos, qk_scale,
                  stride_block, stride_slot, offs_n, offs_d, BLOCK: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                  OFFSET_DTYPE: tl.constexpr, MASKED: tl.constexpr, DOT_DTYPE: tl.constexpr,
                  PRECISION: tl.constexpr):
    """Key tiles [n_start, n_end) of BLOCK positions. slot holds the first tile's slot offsets;
    returns (acc, m_i, l_i, the slot offsets of the tile at n_end)."""
    for n0 in range(n_start, n_end, BLOCK):
        next_slot = _kv_slots(bt_row, n0 + BLOCK, kv_end, stride_block, stride_slot, offs_n, BLOCK_SIZE, OFFSET_DTYPE)
        acc, m_i, l_i = _attend_tile(q, acc, m_i, l_i, slot, k_base, v_base, n0, kv_end, q_pos, qk_scale,
                                     offs_n, offs_d, MASKED, DOT_DTYPE, PRECISION)
        slot = next_slot
    return acc, m_i, l_i, slot


@triton.jit
def _prefill_kernel(
    q_ptr, kv_ptr, query_start_loc_ptr, seq_lens_ptr, block_table_ptr, out_ptr,
    qk_scale, num_seqs,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_kv, stride_block, stride_slot, stride_bt,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N_DIAG: tl.constexpr,
    OFFSET_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    # NOTE: tiles in reverse order: the longest (last in each sequence) start first, shortening the tail.
    tile = tl.num_programs(0) - 1 - tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = _find_seq(query_start_loc_ptr, num_seqs, tile, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    q_tile_start = (tile - (q_start // BLOCK_Q + seq)) * BLOCK_Q
    if q_tile_start >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context_len = seq_len - q_len

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    token = q_tile_start + offs_m // GROUP  # within the sequence
    head = kv_head * GROUP + offs_m % GROUP
    row_mask = (offs_m < BLOCK_Q * GROUP) & (token < q_len)
    # NOTE: every row (masked-out ones too) has q_pos >= 0 and the first tile holds position 0,
    # so m_i is finite after it: no row ever computes exp2(-inf - -inf).
    q_pos = context_len + token
    q_rows = (q_start + token).to(tl.int64)
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_mask[:, None], other=0.0).to(DOT_DTYPE)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    k_base = kv_ptr + kv_head * HEAD_DIM
    v_base = k_base + stride_kv
    bt_row = block_table_ptr + seq.to(tl.int64) * stride_bt
    # KV tiles [0, full_end) are visible to every row of the tile: no mask. Past it, tiles of
    # BLOCK_N_DIAG (<= BLOCK_N, a divisor): [full_end, diag_start) still unmasked, the diagonal
    # tiles [diag_start, kv_end) masked; kv_end is one past the last valid row's position. With
    # BLOCK_Q < BLOCK_N the smaller diagonal tiles skip keys no row of the tile may see.
    visible = context_len + q_tile_start + 1  # positions [0, visible) are seen by every row
    full_end = visible // BLOCK_N * BLOCK_N
    diag_start = visible // BLOCK_N_DIAG * BLOCK_N_DIAG
    kv_end = context_len + tl.minimum(q_tile_start + BLOCK_Q, q_len)
    # NOTE: each tile's slot offsets are loaded one tile ahead (loop-carried), so the K/V addresses
    # never wait on a block-table load of the same iteration: Triton's pipeliner then keeps
    # num_stages - 1 K/V tiles in flight (loaded in the same iteration, it waited on every copy).
    slot = _kv_slots(bt_row, 0, kv_end, stride_block, stride_slot, offs_n, BLOCK_SIZE, OFFSET_DTYPE)
    acc, m_i, l_i, slot = _attend_range(q, acc, m_i, l_i, slot, bt_row, k_base, v_base, 0, full_end, kv_end, q_pos,
                                        qk_scale, stride_block, stride_slot, offs_n, offs_d, BLOCK_N, BLOCK_SIZE,
                                        OFFSET_DTYPE, False, DOT_DTYPE, PRECISION)
    offs_nd = tl.arange(0, BLOCK_N_DIAG)
    if BLOCK_N_DIAG != BLOCK_N:  # (equal: the range above already carries full_end's slots)
        slot = _kv_slots(bt_row, full_end, kv_end, stride_block, stride_slot, offs_nd, BLOCK_SIZE, OFFSET_DTYPE)
    acc, m_i, l_i, slot = _attend_range(q, acc, m_i, l_i, slot, bt_row, k_base, v_base, full_end, diag_start, kv_end,
                                        q_pos, qk_scale, stride_block, stride_slot, offs_nd, offs_d, BLOCK_N_DIAG,
                                        BLOCK_SIZE, OFFSET_DTYPE, False, DOT_DTYPE, PRECISION)
    acc, m_i, l_i, slot = _attend_range(q, acc, m_i, l_i, slot, bt_row, k_base, v_base, diag_start, kv_end, kv_end,
                                        q_pos, qk_scale, stride_block, stride_slot, offs_nd, offs_d, BLOCK_N_DIAG,
                                        BLOCK_SIZE, OFFSET_DTYPE, True, DOT_DTYPE, PRECISION)

    out = acc / l_i[:, None]
    tl.store(out_ptr + q_rows[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None])


def prefill_config(head_dim: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a head size and dtype.

    Measured on an H100 (triton 3.6), 8k-token causal prefill, 32/8 heads, bf16, against SDPA
    (540-550 TFLOP/s at D=128): D=128 (128, 128, 8, 3) 440-468 TFLOP/s, 0.82-0.85x (BLOCK_N 64:
    ~0.79x); D=64 (128, 128, 4, 3) 390-398 TFLOP/s, 0.95x.
    """
    row_bytes = head_dim * dtype.itemsize
    if row_bytes <= 128:  # bf16/fp16 D=64: Q 16 KiB + 3 stages x (K 16 + V 16 KiB)
        return 128, 128, 4, 3
    if row_bytes <= 256:  # bf16/fp16 D=128: Q 32 KiB + 3 stages x (K 32 + V 32 KiB) = 225 KiB of 227
        return 128, 128, 8, 3
    return 64, 32, 4, 2  # fp32 D=128, 16-bit D=256


def paged_attention_prefill(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    scale: float,
    max_query_len: int,
    max_seq_len: int,
    out: torch.Tensor | None = None,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
    block_n_diag: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """Causal attention of a packed ragged batch, query [T, Hq, D] -> out [T, Hq, D] (query's dtype).

    block_m / block_n / block_n_diag (the key tile on the diagonal, a power of two <= block_n;
    default block_n) and num_warps / num_stages override the launch config (tests, the GPU
    benchmark's sweep). With short queries (max_query_len small) the q tile shrinks to fit them,
    so decode rows in a mixed batch do not pay for a 128-row tile.
    """
    num_tokens, num_heads, head_dim = query.shape
    block_size, num_kv_heads = kv_cache.shape[2], kv_cache.shape[3]
    num_seqs = seq_lens.shape[0]
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_tokens == 0:
        return out
    cfg_block_m, cfg_block_n, cfg_warps, cfg_stages = prefill_config(head_dim, query.dtype)
    block_m = block_m or min(cfg_block_m, max(16, triton.next_power_of_2(max(1, max_query_len) * group)))
    block_m = max(block_m, triton.next_power_of_2(group))
    block_n = block_n or cfg_block_n
    block_n_diag = block_n_diag or block_n
    if block_n % block_n_diag or block_n_diag < 16 or block_n_diag & (block_n_diag - 1):
        raise ValueError(f"block_n_diag {block_n_diag} must be a power of two >= 16 dividing block_n {block_n}")
    num_warps = num_warps or (cfg_warps if block_m >= cfg_block_m else 4)
    num_stages = num_stages or cfg_stages
    block_q = block_m // group
    dot_dtype, precision = dot_types(query.dtype, _prefill_kernel)
    grid = (num_tokens // block_q + num_seqs, num_kv_heads)
    # NOTE: 32-bit slot offsets whenever the layer's cache allows: fewer registers and less address
    # math per K/V row (measured on an H100: +3-6% at D=128, +10% at D=64).
    offset_dtype = tl.int32 if kv_cache.numel() < _INT32_OFFSETS_BELOW else tl.int64
    _prefill_kernel[grid](
        query, kv_cache, query_start_loc, seq_lens, block_table, out,
        scale * _LOG2E, num_seqs,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), block_table.stride(0),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_N_DIAG=block_n_diag, OFFSET_DTYPE=offset_dtype,
        DOT_DTYPE=dot_dtype, PRECISION=precision,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
