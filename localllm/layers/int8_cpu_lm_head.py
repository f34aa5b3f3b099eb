"""The LM head on the CPU as 8-bit groups.

The head is the largest single matrix of a small model (SmolLM2: 49152 x 576, 113 MB in
float32, about a quarter of a decode step's time). The int4 path's bodies are 4-bit; its head
goes to 8 bits, as llama.cpp keeps it (a Q4 GGUF stores token_embd as Q8_0).

Quantization follows llama.cpp's Q8_0 (symmetric, groups of 32 along the input dim):
d = max|w| / 127, q = round(w / d) in -127..127, w ~= d * q. For a Q8_0 source this recovers the
file's codes exactly; only d is rounded to bfloat16 (the kernels' scale type).

Two kernels, chosen by the CPU:
- AVX512-BF16 (kernels/cpu/qgemm.c): the 8-bit codes times the bfloat16 hidden state, float32 out.
  The products are exact and the sums float32: the logits are x_bf16 . (d * q) up to float32
  rounding.
- Otherwise torch's int4 kernel, twice: torch has no fast 8-bit CPU GEMV (`_weight_int8pack_mm`
  runs about 50x slower than int4), so each code is split into two 4-bit planes,
  u = q + 128 = 16 * hi + lo, and
      d * q = (16 d) * (hi - 8) + [d * (lo - 8) + 8 d].
  Each bracket is one int4 matrix in the kernel's form w = (code - 8) * scale + zero: the high
  plane with scale 16 d and zero 0, the low plane with scale d and zero 8 d. The two products sum
  to the 8-bit product exactly (16 and 8 are powers of two: bf16(16 d) = 16 bf16(d)).
  That kernel rounds each product to bfloat16 on the way out (an error up to 2^-9 of the value:
  0.06 on a logit of 20), enough to flip a near-tie of the top two tokens. So the tokens that
  could be the largest logit given that error are recomputed from the 8-bit rows in float32: a
  greedy pick is the 8-bit head's own, and the sampled-from top of the distribution is exact; only
  tokens too far below the top to matter keep the rounded value.
"""

from __future__ import annotations

import torch
from torch import nn

from localllm.kernels import cpu_native, cpu_qgemm

GROUP_SIZE = 32
_ROW_MULTIPLE = 16
_INT8_MAX = 127


def quantize_int8_groups(weight: torch.Tensor, group_size: int = GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (q int32 [N, K] in -127..127, d bf16 [N, K / group_size]). A float32 CPU
    weight goes through the C kernel (same bits, one pass instead of several)."""
    if weight.dtype == torch.float32 and weight.device.type == "cpu" and cpu_native.library() is not None:
        return cpu_native.quantize_int8_groups(weight, group_size)
    return quantize_int8_groups_reference(weight, group_size)


def quantize_int8_groups_reference(weight: torch.Tensor, group_size: int = GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_int8_groups in torch ops: the definition."""
    n, k = weight.shape
    groups = weight.float().reshape(n, k // group_size, group_size)
    d = (groups.abs().amax(dim=-1, keepdim=True) / _INT8_MAX).to(torch.bfloat16)
    safe = d.float().clamp_min(1e-30)
    q = (groups / safe).round_().clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int32).reshape(n, k)
    return q, d.squeeze(-1)


def dequantize_int8_groups(q: torch.Tensor, d: torch.Tensor, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """The reference: [N, K] float32 weights d * q that the two planes multiply by."""
    return q.float() * d.float().repeat_interleave(group_size, dim=1)


def _scales_and_zeros(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """[N, G] scale and zero -> the kernel's bf16 [G, N, 2]."""
    return torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)


class Int8CPULMHead(nn.Module):
    """Drop-in for an LMHead after its weights are loaded: forward(hidden [N, H]) -> float32 logits."""

    def __init__(self, weight: torch.Tensor, group_size: int = GROUP_SIZE) -> None:
        super().__init__()
        self.vocab_size, self.hidden_size = weight.shape
        self.group_size = group_size
        q, d = quantize_int8_groups(weight, group_size)
        if cpu_qgemm.available():
            packed = cpu_qgemm.pack_int8(q, d, group_size)
            self.register_buffer("qgemm_codes", packed.codes)
            self.register_buffer("qgemm_scales", packed.scales)
            return
        # Rows kept for the exact recompute of the top candidates (1 byte per weight).
        self.register_buffer("codes", q.to(torch.int8))
        self.register_buffer("group_scales", d)
        n = self.vocab_size
        padded = -(-n // _ROW_MULTIPLE) * _ROW_MULTIPLE  # the kernel packs rows in sixteens
        if padded != n:
            q = torch.cat([q, q.new_zeros(padded - n, q.shape[1])])
            d = torch.cat([d, d.new_zeros(padded - n, d.shape[1])])
        unsigned = q.add_(128)  # 1..255 (in place: q is not read again)
        d = d.float()  # exact: d is already on the bf16 grid
        high = unsigned >> 4
        planes = ((high, 16 * d, torch.zeros_like(d)), (unsigned.bitwise_and_(15), d, 8 * d))
        for name, (codes, scale, zero) in zip(("high", "low"), planes):
            self.register_buffer(f"{name}_packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
            self.register_buffer(f"{name}_scales_and_zeros", _scales_and_zeros(scale, zero))

    @property
    def packed(self) -> cpu_qgemm.PackedInt8 | None:
        """The weights for our kernel (views of this module's buffers), or None for torch's planes."""
        if not hasattr(self, "qgemm_codes"):
            return None
        return cpu_qgemm.PackedInt8(self.qgemm_codes, self.qgemm_scales, self.vocab_size, self.hidden_size,
                                    self.group_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.reshape(-1, self.hidden_size).to(torch.bfloat16)
        packed = self.packed
        if packed is not None:
            return cpu_qgemm.int8_mm(x, packed).reshape(*hidden.shape[:-1], self.vocab_size)
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu
        high = mm(x, self.high_packed, self.group_size, self.high_scales_and_zeros)[:, : self.vocab_size]
        low = mm(x, self.low_packed, self.group_size, self.low_scales_and_zeros)[:, : self.vocab_size]
        # |exact - (high + low)| <= 2^-9 (|high| + |low|) per entry, plus float32 summation-order
        # noise: 2^-8 of each row's largest |high| and |low| bounds it for the whole row, and a token
        # within two bounds of the row's top may be the top.
        bound = (_largest_magnitude(high) + _largest_magnitude(low)).mul_(2.0**-8)
        logits = high.float().add_(low)
        threshold = logits.amax(dim=-1, keepdim=True).sub_(bound.mul_(2))
        rows, cols = torch.nonzero(logits >= threshold, as_tuple=True)
        logits[rows, cols] = self._exact(x[rows].float(), cols)
        return logits.reshape(*hidden.shape[:-1], self.vocab_size)

    def _exact(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """x [C, H] float32 . (d * q)[tokens[c]] for each c, in float32: [C]."""
        scales = self.group_scales[tokens].float().repeat_interleave(self.group_size, dim=1)
        return (x * self.codes[tokens].float() * scales).sum(dim=-1)


def _largest_magnitude(values: torch.Tensor) -> torch.Tensor:
    """max |values| of each row, [M, 1] float32 (amax and amin: torch's aminmax is ~20x slower)."""
    return torch.maximum(values.amax(dim=-1, keepdim=True), values.amin(dim=-1, keepdim=True).neg_()).float()


def convert_lm_head_to_int8(model: nn.Module, group_size: int = GROUP_SIZE) -> bool:
    """Swap the model's float32 `lm_head` for an Int8CPULMHead when its hidden size divides into
    groups; the (possibly tied) embedding keeps its float weight. Returns whether it swapped."""
    head = getattr(model, "lm_head", None)
    weight = getattr(head, "weight", None)
    if weight is None or weight.dtype != torch.float32 or weight.shape[1] % group_size:
        return False
    model.lm_head = Int8CPULMHead(weight.data, group_size)
    return True
