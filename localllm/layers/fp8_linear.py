"""FP8 linears (compressed-tensors float-quantized): float8_e4m3fn weights [N, K] with one scale
per output channel (a per-tensor scale in the file is spread over its channels), activations
quantized per token at run time (or with the file's static input_scale), or left in 16 bits when
the file names no input_activations, or a weight-only config group names the layer (FP8
weight-only, "W8A16"): then x multiplies the dequantized weight (ops.fp8_weight_only_linear: on
CUDA the W4A16 Triton kernels, dequantizing the FP8 weights in registers).

On a CUDA card with FP8 (compute capability 8.9+) ops.fp8_linear runs torch._scaled_mm; elsewhere
the reference emulates it exactly (FP8 products accumulated in float32). NOTE: on the CPU the
weights are upcast to float32 once at load (FP8 -> float conversion is slow there: ~20 ms per
million values), so a CPU FP8 model holds 4 bytes per weight: FP8 is a GPU format, the CPU path
is for correctness and CI.
"""

from __future__ import annotations

import torch
from torch import nn

from localllm.kernels import ops
from localllm.quant.config import QuantScheme


class FP8Linear(nn.Module):
    def __init__(self, scheme: QuantScheme, in_features: int, output_sizes: list[int], shard_ids: list | None,
                 bias: bool, dtype: torch.dtype, device: torch.device, name: str = "linear"):
        super().__init__()
        self.name, self.dtype = name, dtype
        self.in_features, self.output_sizes = in_features, list(output_sizes)
        self.weight_only = scheme.fp8_weight_only
        self.out_features = sum(output_sizes)
        self._shard_ids = list(shard_ids) if shard_ids is not None else None
        n = self.out_features
        self.weight = self._param((n, in_features), torch.float8_e4m3fn, device, self._load_rows)
        self.weight_scale = self._param((n,), torch.float32, device, self._load_scale)
        self.input_scale = (self._param((len(self.output_sizes),), torch.float32, device, self._load_input_scale)
                            if scheme.static_input_scale else None)
        self.bias = self._param((n,), dtype, device, self._load_rows) if bias else None

    @staticmethod
    def _param(shape, dtype, device, loader) -> nn.Parameter:
        param = nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)
        param.weight_loader = loader  # type: ignore[attr-defined]
        return param

    def shard_ids(self) -> list:
        return self._shard_ids if self._shard_ids is not None else [None]

    def _rows(self, param: torch.Tensor, shard_id) -> torch.Tensor:
        if shard_id is None:
            return param.data
        index = self.shard_ids().index(shard_id)
        return param.data.narrow(0, sum(self.output_sizes[:index]), self.output_sizes[index])

    def _load_rows(self, param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
        target = self._rows(param, shard_id)
        if tuple(loaded.shape) != tuple(target.shape):
            raise ValueError(f"shape {tuple(loaded.shape)} does not match the model's {tuple(target.shape)}")
        target.copy_(loaded)

    def _load_scale(self, param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
        target = self._rows(param, shard_id)
        if loaded.numel() == 1:  # per-tensor: the same scale for every channel of the shard
            target.fill_(float(loaded.reshape(())))
            return
        if loaded.numel() != target.numel() or (loaded.dim() == 2 and loaded.shape[1] != 1):
            raise ValueError(f"weight_scale of shape {tuple(loaded.shape)} is neither per-tensor nor "
                             f"per-channel for {target.numel()} channels")
        target.copy_(loaded.reshape(-1))

    def _load_input_scale(self, param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
        if loaded.numel() != 1:
            raise ValueError(f"input_scale must be one value, got shape {tuple(loaded.shape)}")
        index = 0 if shard_id is None else self.shard_ids().index(shard_id)
        if shard_id is None:
            param.data.fill_(float(loaded.reshape(())))
        else:
            param.data[index] = loaded.reshape(())

    @torch.no_grad()
    def process_weights_after_loading(self) -> None:
        if self.input_scale is not None:
            # NOTE: fused shards see the same input; their static scales agree up to calibration noise.
            self.input_scale = nn.Parameter(self.input_scale.data.max().reshape(()), requires_grad=False)
        if self.weight.device.type == "cpu":
            self.weight = nn.Parameter(self.weight.data.float(), requires_grad=False)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if self.weight_only:
            y = ops.fp8_weight_only_linear(x.reshape(-1, self.in_features), self.weight, self.weight_scale, self.bias)
        else:
            y = ops.fp8_linear(x.reshape(-1, self.in_features), self.weight, self.weight_scale, self.input_scale,
                               self.bias)
        return y.reshape(*shape[:-1], self.out_features)
