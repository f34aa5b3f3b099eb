"""GPTQ (Frantar et al., 2022): quantize W column by column, each column's rounding error spread
over the columns not yet quantized through the inverse Hessian of the layer's inputs
(H = 2/n X^T X), in blocks of columns with lazy batch updates; damping adds a fraction of the
mean diagonal; act-order visits columns by decreasing H diagonal (GPTQ v1 writes g_idx for it).

Group parameters (scale, zero) are chosen when the walk reaches a group's first column, from
the weights as updated so far, as the reference implementation does.
"""

from __future__ import annotations

from typing import Callable

import torch

from localllm.quant.rtn import GroupQuant, group_scales_zeros


def _inverse_hessian_factor(h: torch.Tensor, damp_percent: float) -> torch.Tensor:
    """Upper Cholesky factor of H^-1, damping more if H is not positive definite."""
    diag_mean = torch.mean(torch.diag(h))
    damp = damp_percent
    eye = torch.eye(h.shape[0], device=h.device, dtype=h.dtype)
    for _ in range(6):
        try:
            factor = torch.linalg.cholesky(h + damp * diag_mean * eye)
            h_inv = torch.cholesky_inverse(factor)
            return torch.linalg.cholesky(h_inv, upper=True)
        except torch.linalg.LinAlgError:
            damp *= 10
    raise ValueError("GPTQ: the Hessian stays singular even with heavy damping")


@torch.no_grad()
def gptq_walk(w_t: torch.Tensor, h_inv: torch.Tensor, block: int,
              round_column: Callable[[int, torch.Tensor], torch.Tensor]) -> None:
    """The column walk over W^T [K, N] (a column of W is a contiguous row here, so the rank-1
    updates are in-place BLAS ger calls), updated in place. round_column(col, rows) gets the
    block's rows from col on (rows[0]: the column as updated so far) and returns that column on
    the grid; its error, weighted by the upper Cholesky factor h_inv of H^-1, is spread over the
    columns not yet visited, lazily across blocks of `block` columns."""
    k = w_t.shape[0]
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w_t[i1:i2].clone()
        err1 = torch.zeros_like(w1)
        h_inv1 = h_inv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            err = (w1[i] - round_column(i1 + i, w1[i:])) / h_inv1[i, i]
            w1[i:].addr_(h_inv1[i, i:], err, alpha=-1)
            err1[i] = err
        w_t[i2:] -= h_inv[i1:i2, i2:].t() @ err1


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, sym: bool,
    act_order: bool = False, damp_percent: float = 0.01, block_size: int = 128,
) -> GroupQuant:
    """weight [N, K], hessian [K, K] -> GroupQuant in the original column order (g_idx set with
    act-order). Zero points are kept >= 1 so that GPTQ v1 can store them."""
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    n, k = w.shape
    maxq = (1 << bits) - 1
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    h_inv = _inverse_hessian_factor(h, damp_percent)
    # NOTE: a block holds whole groups, so a group's parameters see every update made inside it.
    block = max(group_size, block_size // group_size * group_size)
    groups = k // group_size
    q = torch.zeros(k, n, dtype=torch.int32, device=w.device)
    scales = torch.zeros(n, groups, device=w.device)
    zeros = torch.zeros(n, groups, dtype=torch.int32, device=w.device)
    grid = {}

    def round_column(col: int, rows: torch.Tensor) -> torch.Tensor:
        if col % group_size == 0:
            s, z = group_scales_zeros(rows[:group_size].t(), bits, group_size, sym, min_zero=1)
            scales[:, col // group_size], zeros[:, col // group_size] = s[:, 0], z[:, 0]
            grid["s"], grid["z"] = s[:, 0], z[:, 0].float()
        q_col = torch.clamp(torch.round(rows[0] / grid["s"]) + grid["z"], 0, maxq)
        q[col] = q_col.to(torch.int32)
        return (q_col - grid["z"]) * grid["s"]

    gptq_walk(w.t().contiguous(), h_inv, block, round_column)
    q = q.t().contiguous()
    g_idx = None
    if perm is not None:
        unpermuted = torch.empty_like(q)
        unpermuted[:, perm] = q
        q = unpermuted
        g_idx = torch.empty(k, dtype=torch.int32, device=w.device)
        g_idx[perm] = (torch.arange(k, device=w.device) // group_size).to(torch.int32)
    return GroupQuant(q, scales, zeros, bits, group_size, g_idx)
