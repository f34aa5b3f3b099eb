"""RMSNorm over the last dim with an optional fused residual add, as `reference.rms_norm` does it.

With residual: s = x + residual, rounded to their promoted dtype (x's when they match), is written
out as the new residual and normalized in x's place. out = weight * (s * rsqrt(mean(s^2) + eps) in
float32, cast to s's dtype), the product rounded to promote(weight, s). One program per row, the
whole row in registers.

NOTE: the reference's roundings (the sum, the normalized value, the product) are reproduced, so bf16
results match it up to the float32 reduction order and rsqrt. Inputs are never written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, new_residual_ptr,
    x_stride, residual_stride, eps,
    HIDDEN: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < HIDDEN
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * residual_stride + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(new_residual_ptr.dtype.element_ty)
        tl.store(new_residual_ptr + row * HIDDEN + cols, x, mask=mask)
    h = x.to(tl.float32)
    variance = tl.sum(h * h, axis=0) / HIDDEN
    normed = (h * tl.math.rsqrt(variance + eps)).to(x.dtype)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    out = weight.to(tl.float32) * normed.to(tl.float32)
    tl.store(out_ptr + row * HIDDEN + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor, hidden: int) -> torch.Tensor:
    """t as [rows, hidden] with a contiguous last dim (a view when the strides allow it)."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t if t.dim() == 2 else t.reshape(-1, hidden)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of x [..., H] with weight [H]; with residual returns (out, x + residual)."""
    hidden = x.shape[-1]
    x2 = _rows(x, hidden)
    num_rows = x2.shape[0]
    dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, dtype), device=x.device)
    new_residual = torch.empty(x.shape, dtype=dtype, device=x.device) if residual is not None else None
    if num_rows > 0:
        res2 = _rows(residual, hidden) if residual is not None else x2
        block = triton.next_power_of_2(hidden)
        # NOTE: 4096 bf16 -> 8 warps, 16 elements (two 16-byte vectors) a thread; 16384 -> 16 warps.
        num_warps = max(1, min(16, block // 512))
        _rms_norm_kernel[(num_rows,)](
            x2, res2, weight, out, new_residual if new_residual is not None else out,
            x2.stride(0), res2.stride(0), eps,
            HIDDEN=hidden, BLOCK=block, HAS_RESIDUAL=residual is not None,
            num_warps=num_warps,
        )
    return out if residual is None else (out, new_residual)
