"""W4A16: x [M, K] (bf16 / fp16 / fp32) times integer weights dequantized in registers.

Weights in the engine's layout (quant.formats.runtime): qweight int32 [K / P, N], P = 32 / BITS
rows per word, scales [G, N] in x's dtype, zeros uint8 [G, N]; W^T[k, n] = (q - z) * s of group
k // GROUP. Each tile loads BLOCK_K / P words per column once and splits them into BLOCK_K rows
with shifts (no redundant loads), dequantizes in float32 and rounds to the dot's dtype.

FP8 weight-only (W8A16, FP8=True): the same kernels read float8_e4m3fn weights [N, K] as they are
stored (no repacking) with one float32 scale per output channel: W^T[k, n] = w[n, k] * s[n].

Three shapes of work (chosen on the host from M only, so a CUDA graph replays one of them):
  M == 1       GEMV: no tensor cores; x[k] * W[k, n] summed over k in registers;
  2 <= M <= 16 tall-skinny: one 16-row tile of x, tl.dot, many column blocks;
  M > 16       tiled GEMM, BLOCK_M 32..128.
Decode-sized problems have few column blocks, so K is split over SPLIT_K programs that add their
partial sums into a float32 buffer with atomics (then one cast); large M runs with SPLIT_K = 1.
NOTE: block sizes are reasoned, not tuned: no GPU measured them yet (benchmarks/bench_gpu.py
section w4a16 does). Under TRITON_INTERPRET=1 bf16 dot operands are upcast (interpreter bug,
see attention_decode.dot_types).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attention_decode import dot_types, num_sms


@triton.jit
def _dequant_tile(qw_ptr, s_ptr, z_ptr, k_start, offs_n, N, K,
                  GROUP: tl.constexpr, BITS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                  FP8: tl.constexpr):
    """float32 W^T[k_start : k_start + BLOCK_K, offs_n], zeros outside the matrix."""
    if FP8:  # qw_ptr: float8_e4m3fn [N, K]; s_ptr: float32 [N]; z_ptr unused
        offs_k = k_start + tl.arange(0, BLOCK_K)
        n_ok = offs_n < N
        w = tl.load(qw_ptr + offs_n[None, :].to(tl.int64) * K + offs_k[:, None],
                    mask=(offs_k[:, None] < K) & n_ok[None, :], other=0.0).to(tl.float32)
        s = tl.load(s_ptr + offs_n, mask=n_ok, other=0.0)
        return w * s[None, :]
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    words = k_start // PACK + tl.arange(0, BLOCK_K // PACK)
    n_ok = offs_n < N
    w = tl.load(qw_ptr + words[:, None].to(tl.int64) * N + offs_n[None, :],
                mask=(words[:, None] < K // PACK) & n_ok[None, :], other=0)
    shifts = tl.arange(0, PACK) * BITS
    q = (w[:, None, :] >> shifts[None, :, None]) & MASK  # [BLOCK_K / PACK, PACK, BLOCK_N]
    q = tl.reshape(q, (BLOCK_K, BLOCK_N)).to(tl.float32)
    offs_k = k_start + tl.arange(0, BLOCK_K)
    k_ok = offs_k < K
    if GROUP % BLOCK_K == 0:
        # The whole tile sits in one group: one row of scales and zeros.
        g = k_start // GROUP
        s = tl.load(s_ptr + g * N + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + g * N + offs_n, mask=n_ok, other=0).to(tl.float32)
        return (q - z[None, :]) * s[None, :]
    g = (offs_k // GROUP).to(tl.int64)
    tile_ok = k_ok[:, None] & n_ok[None, :]
    s = tl.load(s_ptr + g[:, None] * N + offs_n[None, :], mask=tile_ok, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + g[:, None] * N + offs_n[None, :], mask=tile_ok, other=0).to(tl.float32)
    return (q - z) * s


@triton.jit
def _w4a16_gemv_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, N, K, tiles_per_split,
    GROUP: tl.constexpr, BITS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ATOMIC: tl.constexpr,
    FP8: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    first = pid_k * tiles_per_split
    last = tl.minimum(first + tiles_per_split, tl.cdiv(K, BLOCK_K))
    for t in range(first, last):
        k_start = t * BLOCK_K
        offs_k = k_start + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
        # NOTE: W rounded to x's dtype first, as the dot paths (and the reference) do.
        w = _dequant_tile(qw_ptr, s_ptr, z_ptr, k_start, offs_n, N, K, GROUP, BITS, BLOCK_K, BLOCK_N, FP8)
        w = w.to(x_ptr.dtype.element_ty).to(tl.float32)
        acc += tl.sum(x[:, None] * w, axis=0)
    if ATOMIC:
        tl.atomic_add(out_ptr + offs_n, acc, mask=offs_n < N)
    else:
        tl.store(out_ptr + offs_n, acc.to(out_ptr.dtype.element_ty), mask=offs_n < N)


@triton.jit
def _w4a16_gemm_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, M, N, K, stride_xm, stride_om, tiles_per_split,
    GROUP: tl.constexpr, BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ATOMIC: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, FP8: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    first = pid_k * tiles_per_split
    last = tl.minimum(first + tiles_per_split, tl.cdiv(K, BLOCK_K))
    for t in range(first, last):
        k_start = t * BLOCK_K
        offs_k = k_start + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :],
                    mask=m_ok[:, None] & (offs_k[None, :] < K), other=0.0)
        w = _dequant_tile(qw_ptr, s_ptr, z_ptr, k_start, offs_n, N, K, GROUP, BITS, BLOCK_K, BLOCK_N, FP8)
        w = w.to(x_ptr.dtype.element_ty)
        acc += tl.dot(x.to(DOT_DTYPE), w.to(DOT_DTYPE), input_precision=PRECISION)
    out = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    mask = m_ok[:, None] & (offs_n[None, :] < N)
    if ATOMIC:
        tl.atomic_add(out, acc, mask=mask)
    else:
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _block_k(in_features: int, group_size: int, bits: int, preferred: int) -> int:
    """A power of two <= preferred that fills whole words; one that divides the group when possible."""
    block = preferred
    while block > 32 // bits and (group_size % block or block > in_features):
        block //= 2
    return max(block, 16, 32 // bits)


def _split_k(num_programs: int, k_tiles: int, device: torch.device) -> int:
    """Enough K splits for ~2 programs per SM, each split at least 2 tiles long."""
    target = 2 * num_sms(device)
    split = 1
    while num_programs * split * 2 <= target and k_tiles // (split * 2) >= 2:
        split *= 2
    return split


def w4a16_matmul(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int, bits: int
) -> torch.Tensor:
    return _matmul(x, qweight, scales, zeros, group_size, bits, qweight.shape[1], fp8=False)


def fp8_w8a16_matmul(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ (weight float8_e4m3fn [N, K] * weight_scale float32 [N] per row)^T -> [M, N] in
    x's dtype; the dequantized weight is rounded to x's dtype before the products, as in w4a16."""
    num_features = weight.shape[1]
    # NOTE: one "group" of all K: _block_k then only asks the tile to divide K when it can.
    return _matmul(x, weight, weight_scale, weight_scale, num_features, 8, weight.shape[0], fp8=True)


def _matmul(x, qweight, scales, zeros, group_size: int, bits: int, out_features: int, fp8: bool) -> torch.Tensor:
    if x.stride(-1) != 1:
        x = x.contiguous()
    num_rows, in_features = x.shape
    if num_rows == 0:
        return torch.empty((0, out_features), dtype=x.dtype, device=x.device)
    if num_rows == 1:
        block_n, block_k, num_warps = 128, _block_k(in_features, group_size, bits, 64), 4
        grid_n = triton.cdiv(out_features, block_n)
        k_tiles = triton.cdiv(in_features, block_k)
        split = _split_k(grid_n, k_tiles, x.device)
        tiles_per_split = triton.cdiv(k_tiles, split)
        out = torch.zeros((1, out_features), dtype=torch.float32, device=x.device) if split > 1 else \
            torch.empty((1, out_features), dtype=x.dtype, device=x.device)
        _w4a16_gemv_kernel[(grid_n, split)](
            x, qweight, scales, zeros, out, out_features, in_features, tiles_per_split,
            GROUP=group_size, BITS=bits, BLOCK_N=block_n, BLOCK_K=block_k, ATOMIC=split > 1, FP8=fp8,
            num_warps=num_warps,
        )
        return out.to(x.dtype) if split > 1 else out
    if num_rows <= 16:
        block_m, block_n, block_k, num_warps, num_stages = 16, 64, _block_k(in_features, group_size, bits, 128), 4, 3
    elif num_rows <= 64:
        block_m, block_n, block_k, num_warps, num_stages = 64, 128, _block_k(in_features, group_size, bits, 64), 4, 3
    else:
        block_m, block_n, block_k, num_warps, num_stages = 128, 128, _block_k(in_features, group_size, bits, 64), 8, 3
    grid_m, grid_n = triton.cdiv(num_rows, block_m), triton.cdiv(out_features, block_n)
    k_tiles = triton.cdiv(in_features, block_k)
    split = _split_k(grid_m * grid_n, k_tiles, x.device) if num_rows <= 16 else 1
    tiles_per_split = triton.cdiv(k_tiles, split)
    if split > 1:
        out = torch.zeros((num_rows, out_features), dtype=torch.float32, device=x.device)
    else:
        out = torch.empty((num_rows, out_features), dtype=x.dtype, device=x.device)
    dot_dtype, precision = dot_types(x.dtype, _w4a16_gemm_kernel)
    _w4a16_gemm_kernel[(grid_m, grid_n, split)](
        x, qweight, scales, zeros, out, num_rows, out_features, in_features, x.stride(0), out.stride(0),
        tiles_per_split, GROUP=group_size, BITS=bits, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        ATOMIC=split > 1, DOT_DTYPE=dot_dtype, PRECISION=precision, FP8=fp8, num_warps=num_warps,
        num_stages=num_stages,
    )
    return out.to(x.dtype) if split > 1 else out
