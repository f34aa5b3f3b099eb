"""Round-to-nearest grids: group-wise integer quantization (the step every method ends with) and
FP8 e4m3 per output channel.

For a weight W [N, K] (rows = output channels, as in nn.Linear) and group size g, group j of row n
covers W[n, j*g:(j+1)*g]. Integers are unsigned, 0 .. 2^bits - 1, and W ~= (q - zero) * scale:
  asymmetric (AWQ): scale = (max - min) / (2^bits - 1), zero = round(-min / scale);
  symmetric (GPTQ sym): scale = 2 max|w| / (2^bits - 1), zero = 2^(bits - 1).
NOTE: scales are rounded to their storage dtype (fp16) before the integers are computed, so
what a file holds dequantizes to exactly what the method optimized against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn


@dataclass
class GroupQuant:
    """q int32 [N, K] in 0..2^bits-1; scales float32 [N, G]; zeros int32 [N, G].

    g_idx int32 [K] (GPTQ act-order): the group of each input channel; None when group j is the
    contiguous columns j*g .. (j+1)*g - 1.
    """

    q: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int
    g_idx: torch.Tensor | None = None

    def group_index(self) -> torch.Tensor:
        if self.g_idx is not None:
            return self.g_idx.long()
        return torch.arange(self.q.shape[1], device=self.q.device) // self.group_size

    def dequantize(self) -> torch.Tensor:
        if self.g_idx is None:
            return dequantize_groups(self.q, self.scales, self.zeros, self.group_size)
        index = self.group_index()
        return (self.q.float() - self.zeros[:, index].float()) * self.scales[:, index].float()


def check_group_size(in_features: int, group_size: int, name: str = "layer") -> None:
    if group_size < 1 or in_features % group_size:
        raise ValueError(f"group size {group_size} does not divide the {in_features} input features of {name}")


def group_scales_zeros(
    w: torch.Tensor, bits: int, group_size: int, sym: bool, min_zero: int = 0, scale_dtype=torch.float16
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales float32 [N, G], zeros int32 [N, G]) of the round-to-nearest grid of each group."""
    n, k = w.shape
    check_group_size(k, group_size)
    maxq = (1 << bits) - 1
    groups = w.float().reshape(n, k // group_size, group_size)
    if sym:
        amax = groups.abs().amax(-1)
        scales = (2 * amax / maxq).clamp_min(1e-5).to(scale_dtype).float()
        zeros = torch.full_like(scales, 1 << (bits - 1), dtype=torch.int32)
    else:
        high, low = groups.amax(-1), groups.amin(-1)
        scales = ((high - low) / maxq).clamp_min(1e-5).to(scale_dtype).float()
        zeros = (-torch.round(low / scales)).clamp(min_zero, maxq).to(torch.int32)
    return scales, zeros


def quantize_with(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Integers of w on a given grid: int32 [N, K]."""
    n, k = w.shape
    maxq = (1 << bits) - 1
    s = scales.repeat_interleave(group_size, dim=1)
    z = zeros.repeat_interleave(group_size, dim=1).float()
    return torch.clamp(torch.round(w.float() / s) + z, 0, maxq).to(torch.int32)


def dequantize_groups(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """float32 [N, K] = (q - zero) * scale, group by group."""
    s = scales.float().repeat_interleave(group_size, dim=1)
    z = zeros.float().repeat_interleave(group_size, dim=1)
    return (q.float() - z) * s


def quantize_groups(
    w: torch.Tensor, bits: int, group_size: int, sym: bool, min_zero: int = 0
) -> GroupQuant:
    """Round to nearest on each group's own min/max grid."""
    scales, zeros = group_scales_zeros(w, bits, group_size, sym, min_zero)
    return GroupQuant(quantize_with(w, scales, zeros, bits, group_size), scales, zeros, bits, group_size)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int, sym: bool = False) -> torch.Tensor:
    """W after a round trip through the grid, in W's dtype (what AWQ's search compares)."""
    return quantize_groups(w, bits, group_size, sym).dequantize().to(w.dtype)


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [N, K] -> (float8_e4m3fn [N, K], float32 scales [N, 1]) with W ~= q * scale per row."""
    amax = w.float().abs().amax(dim=1, keepdim=True)
    scales = (amax / FP8_MAX).clamp_min(1e-12)
    q = (w.float() / scales).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scales


def dequantize_fp8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 q * scale; scales [N, 1], [N] or a scalar (per-tensor)."""
    s = scales.float()
    if s.dim() == 1 and s.numel() == q.shape[0] and q.shape[0] != 1:
        s = s[:, None]
    return q.float() * s
