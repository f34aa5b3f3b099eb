"""compressed-tensors checkpoints (llm-compressor's output; vLLM's "compressed-tensors").

pack-quantized (W4A16 / W8A16), per Linear (K inputs, N outputs, group size g, P = 32 / bits):
  weight_packed int32 [N, K/P]: values + 2^(bits-1) (signed stored unsigned), sequential along K;
  weight_scale [N, K/g]; weight_shape int [2] = (N, K);
  weight_zero_point int32 [N/P, K/g] (asymmetric only): packed along N, also stored + 2^(bits-1).
  W[n, k] = (q - z) * s over the signed values; strategy "channel" is one group per row.
float-quantized (FP8): weight float8_e4m3fn [N, K], weight_scale [N, 1] (channel) or [1]
  (tensor), optional input_scale [1] (static activations; absent: dynamic per-token scales).
"""

from __future__ import annotations

import torch

from localllm.quant.formats.runtime import PackedWeights, from_int_weights
from localllm.quant.packing import unpack_cols, unpack_rows

FP8_DYNAMIC_SCHEME = {
    "targets": ["Linear"],
    "weights": {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel", "dynamic": False,
                "group_size": None, "block_structure": None, "actorder": None, "observer": "minmax"},
    "input_activations": {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "token",
                          "dynamic": True, "group_size": None, "block_structure": None, "actorder": None,
                          "observer": None},
    "output_activations": None,
    "format": "float-quantized",
}


def fp8_config(ignore: list[str], weight_only: bool = False, activations_16bit: list[str] = ()) -> dict:
    """FP8 weights per output channel, dynamic per-token FP8 activations (llm-compressor's
    FP8_DYNAMIC), or with weight_only no input_activations: 16-bit activations (W8A16).

    activations_16bit: targets (names or "re:" patterns: quant.export.fused_target) of the modules
    that keep FP8 weights but 16-bit activations, as a second, weight-only config group; readers
    try names and patterns before group 0's "Linear" class target."""
    weight_only_scheme = dict(FP8_DYNAMIC_SCHEME, input_activations=None)
    groups = {"group_0": weight_only_scheme if weight_only else FP8_DYNAMIC_SCHEME}
    if activations_16bit and not weight_only:
        groups["group_1"] = dict(weight_only_scheme, targets=list(activations_16bit))
    return {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "quantization_status": "compressed",
        "config_groups": groups,
        "ignore": list(ignore),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
    }


def write_fp8(prefix: str, weight: torch.Tensor, scales: torch.Tensor) -> dict[str, torch.Tensor]:
    """weight float8_e4m3fn [N, K], scales float32 [N, 1]."""
    if weight.dtype != torch.float8_e4m3fn or scales.shape != (weight.shape[0], 1):
        raise ValueError("float-quantized FP8 takes float8_e4m3fn weights with [N, 1] scales")
    return {f"{prefix}.weight": weight.contiguous(), f"{prefix}.weight_scale": scales.float().contiguous()}


def wna16_to_runtime(weight_packed: torch.Tensor, weight_scale: torch.Tensor, weight_zero_point: torch.Tensor | None,
                     bits: int, group_size: int, dtype: torch.dtype) -> PackedWeights:
    offset = 1 << (bits - 1)
    q = unpack_cols(weight_packed, bits)  # [N, K], unsigned (signed + offset)
    if weight_zero_point is None:
        zeros = torch.full(weight_scale.shape, offset, dtype=torch.int32, device=q.device)
    else:
        zeros = unpack_rows(weight_zero_point, bits)  # [N, G], zero + offset
    return from_int_weights(q.t(), weight_scale.t().to(dtype).contiguous(), zeros.t(), None, bits, group_size)
