"""AutoAWQ "gemm" checkpoints (what vLLM, SGLang and transformers load as quant_method "awq").

Per Linear (K inputs, N outputs, group size g):
  qweight int32 [K, N/8], qzeros int32 [K/g, N/8]: nibble i of word c holds column
          8c + AWQ_ORDER[i] (AutoAWQ's pack order [0, 2, 4, 6, 1, 3, 5, 7]); zero points as is;
  scales  fp16 [K/g, N].
W^T[k, n] = (q[k, n] - z[k // g, n]) * s[k // g, n].
"""

from __future__ import annotations

import torch

from localllm.quant.formats.runtime import PackedWeights, from_int_weights
from localllm.quant.packing import AWQ_ORDER, pack_cols, unpack_cols
from localllm.quant.rtn import GroupQuant

BITS = (4,)


def config(bits: int, group_size: int) -> dict:
    return {"quant_method": "awq", "bits": bits, "group_size": group_size, "zero_point": True, "version": "gemm",
            "modules_to_not_convert": None}


def write(prefix: str, gq: GroupQuant) -> dict[str, torch.Tensor]:
    """The three tensors of one Linear, named `{prefix}.qweight` etc."""
    if gq.bits not in BITS or gq.g_idx is not None:
        raise ValueError("AWQ gemm holds 4-bit weights in contiguous groups only")
    return {
        f"{prefix}.qweight": pack_cols(gq.q.t(), 4, AWQ_ORDER),
        f"{prefix}.qzeros": pack_cols(gq.zeros.t(), 4, AWQ_ORDER),
        f"{prefix}.scales": gq.scales.t().to(torch.float16).contiguous(),
    }


def to_runtime(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
               dtype: torch.dtype) -> PackedWeights:
    q_t = unpack_cols(qweight, 4, AWQ_ORDER)  # [K, N]
    zeros = unpack_cols(qzeros, 4, AWQ_ORDER)  # [G, N]
    return from_int_weights(q_t, scales.to(dtype), zeros, None, 4, group_size)
