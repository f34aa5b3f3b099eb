"""SiLU-and-mul, the gated MLP activation: x [..., 2I] -> silu(x[..., :I]) * x[..., I:] of shape [..., I].

Computed in float32 with the reference's (and HF's) rounding: silu(gate) is rounded to x's dtype
before the multiply, the product rounded again. The grid is (rows, column blocks of I), so wide
MLPs (I = 14336) at long prefills (T = 8192) spread over every SM.

NOTE: x needs only a contiguous last dim (a row stride is fine); the output is a new contiguous tensor.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, x_stride, INTER: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < INTER
    gate = tl.load(x_ptr + row * x_stride + cols, mask=mask).to(tl.float32)
    up = tl.load(x_ptr + row * x_stride + INTER + cols, mask=mask).to(tl.float32)
    # NOTE: the intermediate rounding matches F.silu(gate) * up in x's dtype (bit-for-bit parity).
    silu = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty).to(tl.float32)
    out = silu * up
    tl.store(out_ptr + row * INTER + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> silu(x[..., :I]) * x[..., I:], a new tensor of x's dtype."""
    inter = x.shape[-1] // 2
    out = torch.empty((*x.shape[:-1], inter), dtype=x.dtype, device=x.device)
    if x.stride(-1) != 1:
        x = x.contiguous()
    x2 = x if x.dim() == 2 else x.reshape(-1, 2 * inter)
    num_rows = x2.shape[0]
    if num_rows == 0 or inter == 0:
        return out
    # NOTE: up to 2048 columns a program: 4 warps, 16 elements (two 16-byte bf16 vectors) a thread.
    block = min(2048, triton.next_power_of_2(inter))
    num_warps = max(1, min(4, block // 256))
    _silu_and_mul_kernel[(num_rows, triton.cdiv(inter, block))](
        x2, out, x2.stride(0), INTER=inter, BLOCK=block, num_warps=num_warps,
    )
    return out
