"""Load-time quantization through bitsandbytes (the optional `bnb` extra): nf4 (4-bit NormalFloat,
blocks of 64, bitsandbytes' QLoRA format) or int8 (LLM.int8(): per-row int8 with fp16 outlier
columns above 6.0), for models that have no pre-quantized checkpoint. No calibration.

convert_linears_to_bnb swaps every dense Linear of a loaded model (the fused qkv / gate_up
included; embeddings and the LM head stay as they are), one layer at a time. NOTE: the 16-bit
weights are loaded first, so the peak at load time is the 16-bit model; what stays resident is
~0.56 (nf4) or ~1.06 (int8) bytes per weight.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import nn

from localllm.layers.linear import Linear

MODES = ("nf4", "int8")


def bnb_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def _bnb():
    # NOTE: bitsandbytes probes for Hugging Face's `kernels` package at import and logs a warning
    # when it finds another module of that name (ours, from a source checkout); it works without.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import bitsandbytes

    return bitsandbytes


class BnbLinear(nn.Module):
    """A loaded Linear re-stored as nf4 or int8 by bitsandbytes; same inputs and outputs."""

    def __init__(self, linear: Linear, mode: str):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"bitsandbytes mode must be one of {MODES}, got {mode!r}")
        bnb = _bnb()
        self.mode, self.in_features, self.out_features = mode, linear.in_features, linear.out_features
        device, dtype = linear.weight.device, linear.weight.dtype
        weight = linear.weight.data.contiguous()
        bias = linear.bias is not None
        if mode == "nf4":
            inner = bnb.nn.Linear4bit(self.in_features, self.out_features, bias=bias, compute_dtype=dtype,
                                      quant_type="nf4", device="meta")
            inner.weight = bnb.nn.Params4bit(weight.cpu(), requires_grad=False, quant_type="nf4", blocksize=64)
        else:
            inner = bnb.nn.Linear8bitLt(self.in_features, self.out_features, bias=bias, has_fp16_weights=False,
                                        threshold=6.0, device="meta")
            inner.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False)
        if bias:
            inner.bias = nn.Parameter(linear.bias.data.clone().cpu(), requires_grad=False)
        self.inner = inner.to(device)  # NOTE: bitsandbytes quantizes on this move
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(self.dtype)).to(x.dtype)


def convert_linears_to_bnb(model: nn.Module, mode: str) -> int:
    """Swap every loaded dense Linear for a BnbLinear; returns how many were swapped."""
    if not bnb_available():
        raise ValueError(f"quantization {mode!r} needs bitsandbytes: pip install 'localllm[bnb]'")
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, Linear)]
    for parent, name, child in swaps:
        setattr(parent, name, BnbLinear(child, mode))
        del child
    return len(swaps)
