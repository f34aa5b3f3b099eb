"""FP8 e4m3 weights, one scale per output channel (compressed-tensors float-quantized, strategy
"channel"): the grid, a per-channel scale search, and GPTQ's error feedback on that grid.

The grid of row n is {v * s_n : v a finite float8_e4m3fn}; rounding is to nearest (ties to even)
with saturation at +-448. e4m3 has three mantissa bits, so every weight above the subnormal range
carries a relative rounding error of up to 1/16: unlike an integer grid, its error scales with the
weight, and the scale only decides where the row's values fall between the powers of two.
"""

from __future__ import annotations

import torch

from localllm.quant.gptq import _inverse_hessian_factor, gptq_walk
from localllm.quant.rtn import FP8_MAX

MIN_SCALE = 1e-12


def round_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x on the grid scale * e4m3 (float32 values): saturating round to nearest, in float32."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale


def amax_scales(w: torch.Tensor) -> torch.Tensor:
    """float32 [N, 1]: max|row| / 448, the largest weight of each row maps to 448 exactly."""
    return (w.float().abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp_min(MIN_SCALE)


def mse_scales(w: torch.Tensor, hdiag: torch.Tensor | None = None, grid: int = 64,
               min_ratio: float = 0.5) -> torch.Tensor:
    """float32 [N, 1]: per row, the scale amax/448 * r (r in [min_ratio, 1], `grid` steps) with the
    least squared rounding error, each column weighted by hdiag [K] (the mean squared input of that
    channel: the error the output sees) when given. r = 1 is always a candidate, so the result is
    never worse than amax_scales on that measure."""
    wf = w.float()
    base = amax_scales(wf)
    weight = None if hdiag is None else hdiag.float().clamp_min(0).view(1, -1)
    best = torch.full_like(base, float("inf"))
    scales = base.clone()
    for r in torch.linspace(1.0, min_ratio, grid).tolist():
        s = base * r
        err = (round_fp8(wf, s) - wf).pow(2)
        if weight is not None:
            err = err * weight
        err = err.sum(dim=1, keepdim=True)
        better = err < best
        best = torch.where(better, err, best)
        scales = torch.where(better, s, scales)
    return scales


def quantize_fp8_rows(w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn [N, K] holding w / scales (scales [N, 1]), saturated at +-448."""
    return (w.float() / scales).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


@torch.no_grad()
def gptq_fp8(weight: torch.Tensor, hessian: torch.Tensor, scales: torch.Tensor | None = None,
             damp_percent: float = 0.01, block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ on the per-channel e4m3 grid: weight [N, K], hessian [K, K] (2/n X^T X) ->
    (float8_e4m3fn [N, K], float32 scales [N, 1]). The scales are fixed before the walk (amax of
    the original rows unless given); each column is rounded onto the grid and its error, weighted
    by the inverse Hessian, is spread over the columns not yet visited (Frantar et al., 2022)."""
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    n, k = w.shape
    if scales is None:
        scales = amax_scales(w)
    scales = scales.float().reshape(n, 1)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h_inv = _inverse_hessian_factor(h, damp_percent)
    s_row = scales.view(n)
    q_t = torch.empty(k, n, dtype=torch.float32, device=w.device)

    def round_column(col: int, rows: torch.Tensor) -> torch.Tensor:
        q_t[col] = round_fp8(rows[0], s_row)
        return q_t[col]

    gptq_walk(w.t().contiguous(), h_inv, block_size, round_column)
    q = quantize_fp8_rows(q_t.t(), scales)  # exact: every value is already on the grid
    return q, scales
