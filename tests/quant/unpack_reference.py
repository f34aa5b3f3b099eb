"""Independent unpackers and packers for the Hub formats, written element by element from the
published rules (AutoAWQ's WQLinear_GEMM.from_linear, AutoGPTQ's QuantLinear.pack), in numpy,
sharing no code with localllm.quant: the tests check our writers and readers against these."""

from __future__ import annotations

import numpy as np
import torch

AUTOAWQ_ORDER_MAP = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ: qweight[:, col] |= intweight[:, col*8 + order_map[i]] << 4i


def _u32(t: torch.Tensor) -> np.ndarray:
    return t.numpy().astype(np.int64) & 0xFFFFFFFF


def awq_unpack(packed: torch.Tensor) -> np.ndarray:
    """int32 [R, C/8] -> int [R, C]."""
    words = _u32(packed)
    rows, cols = words.shape
    out = np.zeros((rows, cols * 8), dtype=np.int64)
    for c in range(cols):
        for i in range(8):
            out[:, c * 8 + AUTOAWQ_ORDER_MAP[i]] = (words[:, c] >> (4 * i)) & 0xF
    return out


def awq_pack(values: np.ndarray) -> torch.Tensor:
    """int [R, C] in 0..15 -> int32 [R, C/8], AutoAWQ's loop."""
    rows, cols = values.shape
    out = np.zeros((rows, cols // 8), dtype=np.int64)
    for c in range(cols // 8):
        for i in range(8):
            out[:, c] |= values[:, c * 8 + AUTOAWQ_ORDER_MAP[i]].astype(np.int64) << (4 * i)
    return torch.from_numpy(out.astype(np.uint32).view(np.int32).copy())


def gptq_unpack_qweight(packed: torch.Tensor, bits: int) -> np.ndarray:
    """int32 [K*bits/32, N] -> int [K, N]: word row r holds input rows r*P .. r*P+P-1."""
    words = _u32(packed)
    per = 32 // bits
    out = np.zeros((words.shape[0] * per, words.shape[1]), dtype=np.int64)
    for r in range(words.shape[0]):
        for j in range(per):
            out[r * per + j] = (words[r] >> (bits * j)) & ((1 << bits) - 1)
    return out


def gptq_unpack_qzeros(packed: torch.Tensor, bits: int) -> np.ndarray:
    """int32 [G, N*bits/32] -> the zero points [G, N] (stored minus one: +1 here)."""
    words = _u32(packed)
    per = 32 // bits
    out = np.zeros((words.shape[0], words.shape[1] * per), dtype=np.int64)
    for c in range(words.shape[1]):
        for j in range(per):
            out[:, c * per + j] = ((words[:, c] >> (bits * j)) & ((1 << bits) - 1)) + 1
    return out


def gptq_pack(intweight_t: np.ndarray, zeros: np.ndarray, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """AutoGPTQ's pack loops: intweight^T [K, N], zeros [G, N] (true zero points, >= 1)."""
    per = 32 // bits
    k, n = intweight_t.shape
    qweight = np.zeros((k // per, n), dtype=np.int64)
    row, i = 0, 0
    while row < qweight.shape[0]:
        for j in range(i, i + per):
            qweight[row] |= intweight_t[j].astype(np.int64) << (bits * (j - i))
        i += per
        row += 1
    z = zeros.astype(np.int64) - 1
    qzeros = np.zeros((z.shape[0], z.shape[1] // per), dtype=np.int64)
    col, i = 0, 0
    while col < qzeros.shape[1]:
        for j in range(i, i + per):
            qzeros[:, col] |= z[:, j] << (bits * (j - i))
        i += per
        col += 1
    as_i32 = lambda a: torch.from_numpy(a.astype(np.uint32).view(np.int32).copy())  # noqa: E731
    return as_i32(qweight), as_i32(qzeros)


def dequant_awq(qweight, qzeros, scales, group_size: int) -> np.ndarray:
    """W [N, K] from AutoAWQ gemm tensors."""
    q, z, s = awq_unpack(qweight), awq_unpack(qzeros), scales.float().numpy()
    g = np.arange(q.shape[0]) // group_size
    return ((q - z[g]) * s[g]).T


def dequant_gptq(qweight, qzeros, scales, g_idx, bits: int) -> np.ndarray:
    """W [N, K] from GPTQ v1 tensors: s[g_idx[k]] * (q - (zq[g_idx[k]] + 1))."""
    q, z, s = gptq_unpack_qweight(qweight, bits), gptq_unpack_qzeros(qzeros, bits), scales.float().numpy()
    g = g_idx.numpy().astype(np.int64)
    return (s[g] * (q - z[g])).T
