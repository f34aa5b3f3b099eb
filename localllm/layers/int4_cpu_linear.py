"""W4A16 on the CPU: linear weights as 4-bit groups, multiplied by our AVX512-BF16 kernel
(kernels/cpu/qgemm.c, float32 out) where the CPU has it, else by torch's int4 CPU kernel (bfloat16
out).

Decode on a CPU is bound by the bytes of weights read per token; 4-bit groups read about a
seventh of float32. Activations stay float32 between layers and are rounded to bfloat16 only
inside the matmul (llama.cpp rounds them to 8 bits there). Our kernel's products are then exact
and its sums float32, so its output differs from x_bf16 . W in float64 by float32 rounding only;
torch's rounds its output to bfloat16 (a relative error up to 2^-9).

Quantization is asymmetric, group-wise along the input dim, round to nearest:
scale = (max - min) / 15, q = round((w - min) / scale), w ~= q * scale + min. For a GGUF
Q4_1 source (llama.cpp sets min = the block's minimum and d = range / 15, so every block holds
a 0 and a 15) this recovers the file's own grid: nothing is lost beyond rounding the scales
to bfloat16. torch's kernel computes w = (q - 8) * scale + zero, hence zero = min + 8 * scale.
"""

from __future__ import annotations

import torch
from torch import nn

from localllm.kernels import cpu_native, cpu_qgemm
from localllm.layers.linear import Linear

GROUP_SIZE = 32


def int4_kernel_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"
    )


def quantize_int4_groups(weight: torch.Tensor, group_size: int = GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (q int32 [N, K] in 0..15, scales_and_zeros bf16 [K / group_size, N, 2]).
    A float32 CPU weight goes through the C kernel (same bits, one pass instead of a dozen)."""
    if weight.dtype == torch.float32 and weight.device.type == "cpu" and cpu_native.library() is not None:
        return cpu_native.quantize_int4_groups(weight, group_size)
    return quantize_int4_groups_reference(weight, group_size)


def quantize_int4_groups_reference(weight: torch.Tensor, group_size: int = GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_int4_groups in torch ops: the definition."""
    n, k = weight.shape
    groups = weight.float().reshape(n, k // group_size, group_size)
    low = groups.amin(dim=-1, keepdim=True)
    high = groups.amax(dim=-1, keepdim=True)
    scale = ((high - low) / 15).clamp_min(1e-12)
    q = ((groups - low) / scale).round_().clamp_(0, 15).to(torch.int32).reshape(n, k)
    zero = low + 8 * scale
    scales_and_zeros = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], dim=-1)  # [N, G, 2]
    return q, scales_and_zeros.transpose(0, 1).contiguous().to(torch.bfloat16)


def dequantize_int4_groups(q: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """The reference: [N, K] float32 weights that the kernel multiplies by."""
    scale = scales_and_zeros[..., 0].float().t().repeat_interleave(group_size, dim=1)
    zero = scales_and_zeros[..., 1].float().t().repeat_interleave(group_size, dim=1)
    return (q.float() - 8) * scale + zero


class Int4CPULinear(nn.Module):
    """Drop-in for a Linear after its weights are loaded (same input/output shapes)."""

    def __init__(self, linear: Linear, group_size: int = GROUP_SIZE) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.group_size = group_size
        q, scales_and_zeros = quantize_int4_groups(linear.weight.data, group_size)
        if cpu_qgemm.available():
            packed = cpu_qgemm.pack_int4(q, scales_and_zeros, group_size)
            self.register_buffer("qgemm_codes", packed.codes)
            self.register_buffer("qgemm_scale_zero", packed.scale_zero)
        else:
            self.register_buffer("packed_weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
            self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.bias = linear.bias

    @property
    def packed(self) -> cpu_qgemm.PackedInt4 | None:
        """The weights for our kernel (views of this module's buffers), or None for torch's."""
        if not hasattr(self, "qgemm_codes"):
            return None
        return cpu_qgemm.PackedInt4(self.qgemm_codes, self.qgemm_scale_zero, self.out_features, self.in_features,
                                    self.group_size)

    def project(self, rows: torch.Tensor) -> torch.Tensor:
        """rows bf16 [T, K] -> rows . W^T [T, N] without the bias: float32 from our kernel, bfloat16
        from torch's."""
        packed = self.packed
        if packed is not None:
            return cpu_qgemm.int4_mm(rows, packed, torch.float32)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed_weight, self.group_size,
                                                          self.scales_and_zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x if x.dim() == 2 else x.reshape(-1, self.in_features)  # the model's [T, K] needs no reshape
        y = self.project(rows.to(torch.bfloat16)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)


def convert_linears_to_int4(model: nn.Module, group_size: int = GROUP_SIZE) -> int:
    """Swap every loaded Linear whose input dim divides into groups for an Int4CPULinear.
    The LM head and embeddings are not Linears here and stay as they are. Returns the count."""
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, Linear):
                if child.in_features % group_size == 0 and child.weight.dtype == torch.float32:
                    swaps.append((parent, name, child))
    for parent, name, child in swaps:
        setattr(parent, name, Int4CPULinear(child, group_size))
    return len(swaps)
