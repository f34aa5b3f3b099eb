"""Our torch dequantization of Q4_0 / Q4_1 / Q8_0 blocks equals gguf-py's, on random blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize

from localllm.models.gguf_dequant import dequantize_blocks

_TYPES = {GGMLQuantizationType.Q4_0: 18, GGMLQuantizationType.Q4_1: 20, GGMLQuantizationType.Q8_0: 34}


@pytest.mark.parametrize("qtype", list(_TYPES), ids=lambda t: t.name)
def test_matches_gguf_py(qtype):
    rng = np.random.default_rng(int(qtype))
    rows, blocks_per_row, block_bytes = 7, 5, _TYPES[qtype]
    raw = rng.integers(0, 256, size=(rows, blocks_per_row * block_bytes), dtype=np.uint8)
    # Finite f16 scales (random bytes could be NaN/inf): d (and m) in [-2, 2].
    blocks = raw.reshape(-1, block_bytes)
    num_scales = 2 if qtype == GGMLQuantizationType.Q4_1 else 1
    scales = rng.uniform(-2, 2, size=(blocks.shape[0], num_scales)).astype(np.float16)
    blocks[:, : 2 * num_scales] = scales.view(np.uint8).reshape(blocks.shape[0], -1)
    expected = dequantize(raw, qtype).reshape(-1)
    got = dequantize_blocks(torch.from_numpy(raw.reshape(-1)), int(qtype))
    assert got is not None and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_other_types_fall_back():
    assert dequantize_blocks(torch.zeros(144, dtype=torch.uint8), int(GGMLQuantizationType.Q4_K)) is None
