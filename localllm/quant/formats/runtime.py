"""The engine's one layout for 2/4/8-bit integer weights (AWQ, GPTQ and compressed-tensors all load
into it), what `ops.w4a16_matmul` multiplies by.

For a Linear with K inputs, N outputs, group size g (G = K / g groups), P = 32 / bits:
  qweight int32 [K / P, N]: rows packed sequentially, as GPTQ's qweight (element k of column n at
          bits (k % P) * bits of word [k // P, n]);
  scales  [G, N] in the model's dtype;  zeros uint8 [G, N] (the true zero point, GPTQ's z-1 undone);
  perm    int64 [K] or None: with act-order the rows are stored sorted by group, and the layer
          feeds x[:, perm] (so group j is again rows j*g .. (j+1)*g - 1).
W^T[k, n] = (q[k, n] - zeros[k // g, n]) * scales[k // g, n] over the permuted rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from localllm.quant.packing import pack_rows, unpack_rows
from localllm.quant.rtn import GroupQuant


@dataclass
class PackedWeights:
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    perm: torch.Tensor | None
    bits: int
    group_size: int

    @property
    def in_features(self) -> int:
        return self.qweight.shape[0] * 32 // self.bits

    @property
    def out_features(self) -> int:
        return self.qweight.shape[1]

    def int_weights(self) -> torch.Tensor:
        """int32 [K, N] over the stored (permuted) rows."""
        return unpack_rows(self.qweight, self.bits)

    def dequantize(self) -> torch.Tensor:
        """float32 W [N, K] in the original input order (what nn.Linear holds)."""
        q = self.int_weights().float()
        s = self.scales.float().repeat_interleave(self.group_size, dim=0)
        z = self.zeros.float().repeat_interleave(self.group_size, dim=0)
        w_t = (q - z) * s  # [K, N], permuted rows
        if self.perm is not None:
            unpermuted = torch.empty_like(w_t)
            unpermuted[self.perm] = w_t
            w_t = unpermuted
        return w_t.t().contiguous()


def from_int_weights(
    q_t: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor | None,
    bits: int, group_size: int, source: str = "weights",
) -> PackedWeights:
    """From unpacked integers q_t [K, N], scales [G, N], zeros [G, N] and each row's group (g_idx
    [K], None: contiguous groups). Raises ValueError when the groups are not g rows each."""
    k = q_t.shape[0]
    perm = None
    if g_idx is not None:
        g_idx = g_idx.long()
        contiguous = torch.arange(k, device=g_idx.device) // group_size
        if not torch.equal(g_idx, contiguous):
            perm = torch.argsort(g_idx, stable=True)
            if not torch.equal(g_idx[perm], contiguous):
                raise ValueError(f"{source}: g_idx does not give every group exactly {group_size} rows")
            q_t = q_t[perm]
    return PackedWeights(
        qweight=pack_rows(q_t, bits),
        scales=scales,
        zeros=zeros.to(torch.uint8),
        perm=perm,
        bits=bits,
        group_size=group_size,
    )


def from_group_quant(gq: GroupQuant) -> PackedWeights:
    """The runtime layout of a GroupQuant (its scales stay float32)."""
    return from_int_weights(gq.q.t(), gq.scales.t().contiguous(), gq.zeros.t().contiguous(), gq.g_idx,
                            gq.bits, gq.group_size)
