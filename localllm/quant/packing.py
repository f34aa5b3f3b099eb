"""Bit packing of small unsigned integers into int32 words, the building block of every format.

Two directions: along rows (GPTQ's qweight: word r of column c holds rows r*P .. r*P+P-1, P =
32 / bits, element i at bit i*bits) and along columns (AWQ, GPTQ's qzeros, compressed-tensors:
word c of a row holds columns c*P .. c*P+P-1, in `order`).

NOTE: words are int32 with two's-complement wrap-around, as every format stores them: a value
whose top nibble is >= 8 makes the word negative. Unpacking masks after an arithmetic shift, so
the sign never leaks into a value.
"""

from __future__ import annotations

from typing import Sequence

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AutoAWQ word holds column 8c + AWQ_ORDER[i]


def _check_bits(bits: int) -> int:
    if bits not in (2, 4, 8):
        raise ValueError(f"cannot pack {bits}-bit values into int32 words (2, 4 or 8 bits)")
    return 32 // bits


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 words in [0, 2^32) -> int32 with wrap-around."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _pack_last(values: torch.Tensor, bits: int, order: Sequence[int] | None) -> torch.Tensor:
    per_word = _check_bits(bits)
    rows, cols = values.shape
    if cols % per_word:
        raise ValueError(f"{cols} values do not fill whole {bits}-bit words ({per_word} per word)")
    v = values.to(torch.int64)
    if int(v.min()) < 0 or int(v.max()) >= 1 << bits:
        raise ValueError(f"values must lie in 0..{(1 << bits) - 1} to pack in {bits} bits")
    v = v.view(rows, cols // per_word, per_word)
    if order is not None:
        v = v[..., list(order)]
    shifts = torch.arange(per_word, dtype=torch.int64, device=v.device) * bits
    return _to_int32((v << shifts).sum(-1))


def _unpack_last(words: torch.Tensor, bits: int, order: Sequence[int] | None) -> torch.Tensor:
    per_word = _check_bits(bits)
    if words.dtype != torch.int32:
        raise ValueError(f"packed words must be int32, got {words.dtype}")
    shifts = torch.arange(per_word, dtype=torch.int64, device=words.device) * bits
    v = (words.to(torch.int64).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # [R, W, per_word]
    if order is not None:
        inverse = [0] * per_word
        for slot, column in enumerate(order):
            inverse[column] = slot
        v = v[..., inverse]
    return v.reshape(words.shape[0], -1).to(torch.int32)


def pack_cols(values: torch.Tensor, bits: int, order: Sequence[int] | None = None) -> torch.Tensor:
    """values int [R, C] in 0..2^bits-1 -> int32 [R, C * bits / 32]."""
    return _pack_last(values, bits, order)


def unpack_cols(words: torch.Tensor, bits: int, order: Sequence[int] | None = None) -> torch.Tensor:
    """int32 [R, W] -> int32 [R, W * 32 / bits] in 0..2^bits-1."""
    return _unpack_last(words, bits, order)


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """values int [R, C] -> int32 [R * bits / 32, C], rows packed sequentially (GPTQ's qweight)."""
    return _pack_last(values.t(), bits, None).t().contiguous()


def unpack_rows(words: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [W, C] -> int32 [W * 32 / bits, C]."""
    return _unpack_last(words.t().contiguous(), bits, None).t().contiguous()
