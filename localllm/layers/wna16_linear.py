"""Integer-weight linears (AWQ, GPTQ, compressed-tensors pack-quantized): a drop-in for Linear,
MergedLinear and QKVLinear when the checkpoint holds 2/4/8-bit weights.

Loading keeps the file's own tensors (qweight, qzeros, scales, g_idx / weight_packed, ...) in
parameters of the checkpoint's shapes, each fused shard (q, k, v / gate, up) written into its
slice along the output dim. process_weights_after_loading() then converts them, once, into the
engine's one layout (quant.formats.runtime.PackedWeights) and drops the file's tensors.

forward: x[:, perm] (act-order only) @ W^T through ops.w4a16_matmul (Triton on CUDA, the torch
reference elsewhere); on the CPU, 4-bit weights in groups of 32..256 go through torch's int4 CPU
kernel instead (bfloat16 activations inside the matmul), unless LOCALLLM_KERNELS picks a backend.
NOTE: on the CPU that path keeps torch's packed copy beside ours (1 byte per weight in all).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from localllm.kernels import ops
from localllm.quant.config import QuantScheme
from localllm.quant.formats import awq, compressed_tensors, gptq

_CPU_INT4_GROUPS = (32, 64, 128, 256)


@dataclass(frozen=True)
class _Native:
    """A checkpoint tensor: its shape, dtype, and how the output dim N lives in it."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    n_dim: int | None  # the dim that holds N (None: one copy per shard, checked equal)
    n_div: int = 1  # N is packed n_div to an element along n_dim


def _native_tensors(scheme: QuantScheme, k: int, n: int, num_shards: int) -> dict[str, _Native]:
    bits, g = scheme.bits, scheme.group_size_for(k)
    p, groups = 32 // bits, k // g
    if scheme.method == "awq":
        return {"qweight": _Native((k, n // 8), torch.int32, 1, 8),
                "qzeros": _Native((groups, n // 8), torch.int32, 1, 8),
                "scales": _Native((groups, n), torch.float32, 1)}
    if scheme.method == "gptq":
        return {"qweight": _Native((k // p, n), torch.int32, 1),
                "qzeros": _Native((groups, n // p), torch.int32, 1, p),
                "scales": _Native((groups, n), torch.float32, 1),
                "g_idx": _Native((num_shards, k), torch.int32, None)}
    tensors = {"weight_packed": _Native((n, k // p), torch.int32, 0),
               "weight_scale": _Native((n, groups), torch.float32, 0),
               "weight_shape": _Native((num_shards, 2), torch.int64, None)}
    if not scheme.sym:
        tensors["weight_zero_point"] = _Native((n // p, groups), torch.int32, 0, p)
    return tensors


class WNA16Linear(nn.Module):
    """y = x W^T + b with W stored as integers in groups along the input dim."""

    def __init__(self, scheme: QuantScheme, in_features: int, output_sizes: list[int], shard_ids: list | None,
                 bias: bool, dtype: torch.dtype, device: torch.device, name: str = "linear"):
        super().__init__()
        self.scheme, self.name = scheme, name
        self.in_features, self.output_sizes = in_features, list(output_sizes)
        self.out_features = sum(output_sizes)
        self._shard_ids = list(shard_ids) if shard_ids is not None else None
        self.bits, self.group_size = scheme.bits, scheme.group_size_for(in_features)
        self.dtype = dtype
        if in_features % self.group_size:
            raise ValueError(f"{name}: group size {self.group_size} does not divide {in_features} inputs")
        self._natives = _native_tensors(scheme, in_features, self.out_features, len(self.output_sizes))
        for tensor_name, spec in self._natives.items():
            if spec.n_dim is not None and any(size % spec.n_div for size in self.output_sizes):
                raise ValueError(f"{name}: output sizes {self.output_sizes} do not pack {spec.n_div} to a word")
            param = nn.Parameter(torch.empty(spec.shape, dtype=spec.dtype, device=device), requires_grad=False)
            param.weight_loader = self._loader(spec)  # type: ignore[attr-defined]
            self.register_parameter(tensor_name, param)
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, dtype=dtype, device=device), requires_grad=False)
            self.bias.weight_loader = self._loader(_Native((self.out_features,), dtype, 0))  # type: ignore[attr-defined]
        else:
            self.bias = None
        for buffer in ("packed_qweight", "packed_scales", "packed_zeros", "input_perm", "int4_packed", "int4_scales_zeros"):
            self.register_buffer(buffer, None)

    def shard_ids(self) -> list:
        return self._shard_ids if self._shard_ids is not None else [None]

    def _loader(self, spec: _Native):
        def load(param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
            if shard_id is None:  # an unfused layer, or one fused in the checkpoint already
                target = param.data
                if spec.n_dim is None:
                    loaded = loaded.unsqueeze(0).expand(param.shape)
            else:
                index = self.shard_ids().index(shard_id)
                if spec.n_dim is None:
                    target = param.data[index]
                else:
                    offset = sum(self.output_sizes[:index]) // spec.n_div
                    target = param.data.narrow(spec.n_dim, offset, self.output_sizes[index] // spec.n_div)
            if tuple(loaded.shape) != tuple(target.shape):
                raise ValueError(f"shape {tuple(loaded.shape)} does not match the model's {tuple(target.shape)}")
            target.copy_(loaded)

        return load

    @torch.no_grad()
    def process_weights_after_loading(self) -> None:
        """File tensors -> the engine's packed layout (once, after load_weights)."""
        s, dtype, g = self.scheme, self.dtype, self.group_size
        if s.method == "awq":
            packed = awq.to_runtime(self.qweight, self.qzeros, self.scales, g, dtype)
        elif s.method == "gptq":
            g_idx = self.g_idx
            if not bool((g_idx == g_idx[0:1]).all()):
                raise ValueError(f"{self.name}: the fused projections have different g_idx (act-order)")
            packed = gptq.to_runtime(self.qweight, self.qzeros, self.scales, g_idx[0], self.bits, g, dtype,
                                     s.zero_offset)
        else:
            expected = torch.tensor([[size, self.in_features] for size in self.output_sizes])
            if not torch.equal(self.weight_shape.cpu(), expected):
                raise ValueError(f"{self.name}: weight_shape {self.weight_shape.tolist()} is not {expected.tolist()}")
            zero_point = getattr(self, "weight_zero_point", None)
            packed = compressed_tensors.wna16_to_runtime(self.weight_packed, self.weight_scale, zero_point,
                                                         self.bits, g, dtype)
        for tensor_name in self._natives:
            delattr(self, tensor_name)
        self.packed_qweight, self.packed_scales = packed.qweight.contiguous(), packed.scales.contiguous()
        self.packed_zeros, self.input_perm = packed.zeros.contiguous(), packed.perm
        if self._cpu_int4_eligible():
            q = packed.int_weights().t().contiguous()  # [N, K]
            scales = packed.scales.float()
            zeros = (8 - packed.zeros.float()) * scales  # torch's kernel: (q - 8) * scale + zero
            self.int4_packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            self.int4_scales_zeros = torch.stack([scales, zeros], dim=-1).to(torch.bfloat16).contiguous()

    def _cpu_int4_eligible(self) -> bool:
        from localllm.layers.int4_cpu_linear import int4_kernel_available

        return (self.packed_qweight.device.type == "cpu" and self.bits == 4 and self.group_size in _CPU_INT4_GROUPS
                and int4_kernel_available())

    def dequantized_weight(self) -> torch.Tensor:
        """float32 W [N, K] (tests, the quality report)."""
        from localllm.quant.formats.runtime import PackedWeights

        return PackedWeights(self.packed_qweight, self.packed_scales, self.packed_zeros, self.input_perm,
                             self.bits, self.group_size).dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.input_perm is not None:
            x2 = x2.index_select(1, self.input_perm)
        if self.int4_packed is not None and ops.get_backend() == "auto" and x.device.type == "cpu":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.to(torch.bfloat16), self.int4_packed, self.group_size, self.int4_scales_zeros).to(x.dtype)
        else:
            y = ops.w4a16_matmul(x2, self.packed_qweight, self.packed_scales, self.packed_zeros,
                                 self.group_size, self.bits)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)
