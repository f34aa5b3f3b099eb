"""GPTQ v1 checkpoints (AutoGPTQ / GPTQModel "gptq" format; vLLM's gptq and gptq_marlin).

Per Linear (K inputs, N outputs, group size g, P = 32 / bits):
  qweight int32 [K/P, N]: P input rows per word, sequential (row k at bits (k % P) * bits);
  qzeros  int32 [K/g, N/P]: zero points minus one (v1's convention), sequential along N;
  scales  fp16 [K/g, N];  g_idx int32 [K]: the group of each input row (act-order permutes it).
W^T[k, n] = s[g_idx[k], n] * (q[k, n] - (zq[g_idx[k], n] + 1)).
NOTE: v1 cannot store a zero point of 0 (z - 1 = -1 does not fit the field): our writer's grids
keep zero points >= 1 (min_zero=1 in rtn.group_scales_zeros). "gptq_v2" stores z as is.
"""

from __future__ import annotations

import torch

from localllm.quant.formats.runtime import PackedWeights, from_int_weights
from localllm.quant.packing import pack_cols, pack_rows, unpack_cols, unpack_rows
from localllm.quant.rtn import GroupQuant

BITS = (2, 4, 8)


def config(bits: int, group_size: int, desc_act: bool, sym: bool, damp_percent: float) -> dict:
    return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": desc_act, "sym": sym,
            "damp_percent": damp_percent, "true_sequential": False, "static_groups": False, "lm_head": False,
            "checkpoint_format": "gptq"}


def write(prefix: str, gq: GroupQuant) -> dict[str, torch.Tensor]:
    if gq.bits not in BITS:
        raise ValueError(f"GPTQ holds {', '.join(map(str, BITS))}-bit weights, not {gq.bits}")
    if int(gq.zeros.min()) < 1:
        raise ValueError("GPTQ v1 cannot store a zero point of 0 (it stores z - 1)")
    return {
        f"{prefix}.qweight": pack_rows(gq.q.t(), gq.bits),
        f"{prefix}.qzeros": pack_cols(gq.zeros.t() - 1, gq.bits),
        f"{prefix}.scales": gq.scales.t().to(torch.float16).contiguous(),
        f"{prefix}.g_idx": gq.group_index().to(torch.int32).clone(),  # NOTE: fused parts share g_idx: one copy each
    }


def to_runtime(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor | None,
               bits: int, group_size: int, dtype: torch.dtype, zero_offset: int = 1) -> PackedWeights:
    """zero_offset: 1 for v1 ("gptq"), 0 for "gptq_v2"."""
    q_t = unpack_rows(qweight, bits)
    zeros = unpack_cols(qzeros, bits) + zero_offset
    return from_int_weights(q_t, scales.to(dtype), zeros, g_idx, bits, group_size, "GPTQ weights")
