"""RMSNorm with an optional fused residual add (vLLM's convention)."""

from __future__ import annotations

import torch
from torch import nn

from localllm.kernels import ops
from localllm.layers.linear import _param, default_weight_loader


class RMSNorm(nn.Module):
    """forward(x) -> norm(x) * weight; forward(x, residual) -> (norm(x + residual) * weight, x + residual)."""

    def __init__(self, hidden_size: int, eps: float, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.eps = eps
        self.weight = _param((hidden_size,), dtype, device, default_weight_loader)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return ops.rms_norm(x, self.weight, self.eps, residual)
