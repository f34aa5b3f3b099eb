"""Dequantization of the simple GGUF block formats in torch (vectorized over all blocks at once).

gguf-py's numpy path handles every type but walks rows in Python-sized chunks; these three cover
the decoder weights of most Q4_0 / Q4_1 / Q8_0 files and run several times faster. Other types
return None and the caller falls back to gguf-py.

Block layouts (ggml, little-endian), 32 weights per block:
  Q8_0: d f16, q int8[32]                 w = d * q
  Q4_0: d f16, qs u8[16]                  w = d * (q - 8)
  Q4_1: d f16, m f16, qs u8[16]           w = d * q + m
NOTE: in qs, weight i < 16 is the low nibble of byte i and weight 16 + i its high nibble.
"""

from __future__ import annotations

import torch

Q4_0, Q4_1, Q8_0 = 2, 3, 8  # ggml type ids
_BLOCK_BYTES = {Q4_0: 18, Q4_1: 20, Q8_0: 34}


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The f16 at byte `start` of every block, as float32 [n, 1]."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    return torch.cat((qs & 0x0F, qs >> 4), dim=1).float()


def dequantize_blocks(raw: torch.Tensor, ggml_type: int) -> torch.Tensor | None:
    """raw: uint8 [num_blocks * block_bytes] -> float32 [num_blocks * 32], or None if the type is
    not one of the three above."""
    block_bytes = _BLOCK_BYTES.get(ggml_type)
    if block_bytes is None:
        return None
    blocks = raw.view(-1, block_bytes)
    if ggml_type == Q8_0:
        q = blocks[:, 2:].contiguous().view(torch.int8).float()
        return (_f16(blocks, 0) * q).view(-1)
    if ggml_type == Q4_0:
        return (_f16(blocks, 0) * (_nibbles(blocks[:, 2:]) - 8.0)).view(-1)
    return (_f16(blocks, 0) * _nibbles(blocks[:, 4:]) + _f16(blocks, 2)).view(-1)
