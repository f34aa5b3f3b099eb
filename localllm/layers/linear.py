"""Dense linear layers with HF weight names, and the fused projections (qkv_proj, gate_up_proj).

Every parameter carries a `weight_loader(param, loaded_weight, shard_id=None)` attribute: the
model's load_weights hands each checkpoint tensor to it, so a fused layer knows where q, k, v (or
gate, up) rows go. Loaders check shapes and raise ValueError naming the mismatch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def prefers_transposed(in_features: int, out_features: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a [out, in] weight should sit in memory as [in, out] (column-major).

    NOTE: measured with torch 2.13 on a 2-core AVX-512 CPU (MKL / oneDNN), one token per
    sequence (decode GEMV): float32 runs about twice as fast with W^T contiguous when out >= in
    (qkv, o, gate_up, lm_head; SmolLM2's head 4.1 vs 9.4 ms) and slower when in > out
    (down_proj); bfloat16 is 2-30x faster with W^T contiguous for every shape; float16 is the
    other way round (row-major fast, W^T 10-30x slower). Prefill-sized GEMMs cost about the same
    either way. The parameter keeps its logical [out, in] shape, so loaders, F.linear and
    state_dict() are unaffected; only strides differ.
    """
    if torch.device(device).type != "cpu":
        return False
    if dtype == torch.bfloat16:
        return True
    return dtype == torch.float32 and out_features >= in_features


def _param(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, loader, transposed: bool = False
) -> nn.Parameter:
    # NOTE: uninitialized on purpose: load_weights fills (and checks) every parameter.
    if transposed:
        data = torch.empty(shape[::-1], dtype=dtype, device=device).t()
    else:
        data = torch.empty(shape, dtype=dtype, device=device)
    param = nn.Parameter(data, requires_grad=False)
    param.weight_loader = loader  # type: ignore[attr-defined]
    return param


def default_weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
    if shard_id is not None:
        raise ValueError(f"an unfused parameter takes no shard, got {shard_id!r}")
    if tuple(param.shape) != tuple(loaded_weight.shape):
        raise ValueError(f"shape {tuple(loaded_weight.shape)} does not match the model's {tuple(param.shape)}")
    param.data.copy_(loaded_weight)


class Linear(nn.Module):
    """y = x W^T + b, W [out_features, in_features] as in nn.Linear."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        transposed = prefers_transposed(in_features, out_features, dtype, device)
        self.weight = _param((out_features, in_features), dtype, device, self.weight_loader, transposed)
        self.bias = _param((out_features,), dtype, device, self.weight_loader) if bias else None

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
        default_weight_loader(param, loaded_weight, shard_id)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class MergedLinear(Linear):
    """Several linears over the same input stacked along the output dim, in shard order
    (gate_up_proj: shard 0 gate, shard 1 up). One GEMM instead of several."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool, dtype: torch.dtype, device: torch.device):
        self.output_sizes = list(output_sizes)
        super().__init__(in_features, sum(output_sizes), bias, dtype, device)

    def shard_ids(self) -> list:
        return list(range(len(self.output_sizes)))

    def _shard_rows(self, shard_id) -> tuple[int, int]:
        offset = sum(self.output_sizes[:shard_id])
        return offset, self.output_sizes[shard_id]

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
        if shard_id is None:  # already fused in the checkpoint
            default_weight_loader(param, loaded_weight)
            return
        offset, size = self._shard_rows(shard_id)
        expected = (size, *param.shape[1:])
        if tuple(loaded_weight.shape) != expected:
            raise ValueError(f"shard {shard_id!r}: shape {tuple(loaded_weight.shape)} does not match the model's {expected}")
        param.data.narrow(0, offset, size).copy_(loaded_weight)


class QKVLinear(MergedLinear):
    """q_proj, k_proj and v_proj fused: output rows [q (Hq*D) | k (Hkv*D) | v (Hkv*D)], shards 'q', 'k', 'v'."""

    def __init__(
        self, hidden_size: int, head_size: int, num_heads: int, num_kv_heads: int, bias: bool,
        dtype: torch.dtype, device: torch.device,
    ):
        self.q_size = num_heads * head_size
        self.kv_size = num_kv_heads * head_size
        super().__init__(hidden_size, [self.q_size, self.kv_size, self.kv_size], bias, dtype, device)

    def shard_ids(self) -> list:
        return ["q", "k", "v"]

    def _shard_rows(self, shard_id) -> tuple[int, int]:
        return super()._shard_rows({"q": 0, "k": 1, "v": 2}[shard_id])
