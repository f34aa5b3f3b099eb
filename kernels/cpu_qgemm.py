"""Quantized-weight GEMM on the CPU (cpu/qgemm.c): bfloat16 activations times 4-bit or 8-bit group
codes, for decode batches. Where the CPU lacks AVX512-BF16, `available()` is False and callers keep
torch's int4 kernel.

A packed weight holds the codes and per-group scales in the kernel's panel layout (16 columns per
panel; see qgemm.c). The definitions it must match, in float64, are `dequantize_int4` and
`dequantize_int8` below: out = x . W^T with W = (q - 8) * scale + zero, or W = q * d.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import cpu_native

PANEL = 16


@dataclass(frozen=True)
class PackedInt4:
    codes: torch.Tensor  # uint8 [P, K / 4, 32]
    scale_zero: torch.Tensor  # bf16 [P, G, 2, 16]
    out_features: int
    in_features: int
    group_size: int


@dataclass(frozen=True)
class PackedInt8:
    codes: torch.Tensor  # int8 [P, K / 2, 32]
    scales: torch.Tensor  # bf16 [P, G, 16]
    out_features: int
    in_features: int
    group_size: int


def available() -> bool:
    lib = cpu_native.library()
    return lib is not None and bool(lib.qgemm_available())


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return t if t.shape[0] == rows else torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


def _check_shape(n: int, k: int, group_size: int) -> None:
    if group_size % 4 or k % group_size:
        raise ValueError(f"the CPU qgemm needs K ({k}) divisible by the group ({group_size}), a multiple of 4")


def _packed_codes(q: torch.Tensor, bits: int, reference) -> torch.Tensor:
    """q's codes in the kernel's layout, [P, K * bits / 16, 32]: the C packer for int32 codes where
    the library is built (one pass), else the torch definition `reference` (the same bytes)."""
    n, k = q.shape
    lib = cpu_native.library()
    if lib is None or q.dtype != torch.int32:
        return reference(q)
    q = q.contiguous()
    dtype, pack = (torch.uint8, lib.qgemm_pack_int4) if bits == 4 else (torch.int8, lib.qgemm_pack_int8)
    codes = torch.empty((-(-n // PANEL), k * bits // 16, 2 * PANEL), dtype=dtype)
    pack(q.data_ptr(), n, k, codes.data_ptr())
    return codes


def pack_int4(q: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> PackedInt4:
    """q int [N, K] in 0..15 and the torch kernel's scales_and_zeros bf16 [G, N, 2] -> PackedInt4."""
    n, k = q.shape
    _check_shape(n, k, group_size)
    padded = -(-n // PANEL) * PANEL
    codes = _packed_codes(q, 4, pack_int4_codes_reference)
    sz = _pad_rows(scales_and_zeros.to(torch.bfloat16).transpose(0, 1), padded)  # [N, G, 2]
    sz = sz.reshape(padded // PANEL, PANEL, k // group_size, 2).permute(0, 2, 3, 1).contiguous()
    return PackedInt4(codes, sz, n, k, group_size)


def pack_int4_codes_reference(q: torch.Tensor) -> torch.Tensor:
    """The 4-bit code layout in torch ops (the C packer gives the same bytes)."""
    n, k = q.shape
    padded = -(-n // PANEL) * PANEL
    # [P, 16 cols, K/4 chunks, 2 halves (k + 0/1 or k + 2/3), 2 (e)] -> [P, chunk, half, col, e]
    codes = _pad_rows(q.to(torch.uint8), padded).reshape(padded // PANEL, PANEL, k // 4, 2, 2)
    codes = codes.permute(0, 2, 3, 1, 4)
    return (codes[:, :, 0] | (codes[:, :, 1] << 4)).reshape(padded // PANEL, k // 4, 2 * PANEL).contiguous()


def pack_int8(q: torch.Tensor, d: torch.Tensor, group_size: int) -> PackedInt8:
    """q int [N, K] in -128..127 and d bf16 [N, G] -> PackedInt8."""
    n, k = q.shape
    _check_shape(n, k, group_size)
    padded = -(-n // PANEL) * PANEL
    codes = _packed_codes(q, 8, pack_int8_codes_reference)
    scales = _pad_rows(d.to(torch.bfloat16), padded).reshape(padded // PANEL, PANEL, k // group_size)
    return PackedInt8(codes, scales.permute(0, 2, 1).contiguous(), n, k, group_size)


def pack_int8_codes_reference(q: torch.Tensor) -> torch.Tensor:
    """The 8-bit code layout in torch ops (the C packer gives the same bytes)."""
    n, k = q.shape
    padded = -(-n // PANEL) * PANEL
    codes = _pad_rows(q.to(torch.int8), padded).reshape(padded // PANEL, PANEL, k // 2, 2).permute(0, 2, 1, 3)
    return codes.reshape(padded // PANEL, k // 2, 2 * PANEL).contiguous()


def _call(function, packed, x: torch.Tensor, out_dtype: torch.dtype, out: torch.Tensor | None) -> torch.Tensor:
    if x.dtype != torch.bfloat16 or x.dim() != 2 or x.stride(-1) != 1 or x.shape[1] != packed.in_features:
        raise ValueError(f"qgemm takes bfloat16 [M, {packed.in_features}] rows with unit stride, got "
                         f"{tuple(x.shape)} {x.dtype}")
    m = x.shape[0]
    if out is None:
        out = torch.empty((m, packed.out_features), dtype=out_dtype)
    weights = (packed.codes, packed.scale_zero) if isinstance(packed, PackedInt4) else (packed.codes, packed.scales)
    status = function(x.data_ptr(), x.stride(0) if m > 1 else packed.in_features, weights[0].data_ptr(),
                      weights[1].data_ptr(), out.data_ptr(), int(out.dtype == torch.bfloat16), out.stride(0), m,
                      packed.out_features, packed.in_features, packed.group_size, torch.get_num_threads())
    if status != 0:
        raise MemoryError("the CPU qgemm could not allocate its scratch") if status == -1 else RuntimeError(
            "the CPU qgemm is not built for this CPU (no AVX512-BF16)")
    return out


def int4_mm(x: torch.Tensor, packed: PackedInt4, out_dtype: torch.dtype = torch.bfloat16,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """x bf16 [M, K] . W^T -> [M, N] in out_dtype (bfloat16 or float32)."""
    return _call(cpu_native.library().qgemm_int4, packed, x, out_dtype, out)


def int8_mm(x: torch.Tensor, packed: PackedInt8, out_dtype: torch.dtype = torch.float32,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """x bf16 [M, K] . W^T -> [M, N] in out_dtype (bfloat16 or float32)."""
    return _call(cpu_native.library().qgemm_int8, packed, x, out_dtype, out)


def dequantize_int4(q: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """The weights int4_mm multiplies by, float64 [N, K]: (q - 8) * scale + zero per group."""
    scale = scales_and_zeros[..., 0].double().t().repeat_interleave(group_size, dim=1)
    zero = scales_and_zeros[..., 1].double().t().repeat_interleave(group_size, dim=1)
    return (q.double() - 8) * scale + zero


def dequantize_int8(q: torch.Tensor, d: torch.Tensor, group_size: int) -> torch.Tensor:
    """The weights int8_mm multiplies by, float64 [N, K]: q * d per group."""
    return q.double() * d.double().repeat_interleave(group_size, dim=1)
