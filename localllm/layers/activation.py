"""Gated activations."""

from __future__ import annotations

import torch
from torch import nn

from localllm.kernels import ops


class SiluAndMul(nn.Module):
    """x [..., 2I] (gate | up, as gate_up_proj stacks them) -> silu(gate) * up [..., I]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.silu_and_mul(x)
