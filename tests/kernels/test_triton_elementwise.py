"""Triton kernels for the elementwise ops (KV store, RMSNorm, rotary, SiLU-and-mul) against
`kernels.reference`, on fresh seeded random inputs over a grid of shapes.

Small shapes under Triton's interpreter on CPU, real ones on CUDA. The KV cache is NaN-poisoned
before each store, so a missing or stray write shows; the in-place rotary checks that the parts of
a fused qkv buffer it must not touch (v, dims past rot_dim) keep their exact bits.

Tolerances: fp32 results differ from the reference only by reduction order, rsqrt and exp, so
1e-5. bf16 keeps 8 significant bits: one rounding that flips is 2^-8 = 0.4% relative, and Triton's
interpreter casts float32 -> bf16 by truncation (on the GPU: round to nearest even), so an
intermediate can be a full ulp off; 1.6e-2 relative allows a couple of ulps, while any indexing or
masking bug is off by O(1). Rotary subtracts products of size O(1), so its absolute tolerance is
one ulp of those products rather than of the result; on the GPU it must match bit for bit.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from tests.kernels.conftest import KERNEL_DEVICE, REAL_SHAPES, requires_triton

pytest.importorskip("triton")

from localllm.kernels import reference  # noqa: E402
from localllm.kernels.triton import activation, kv_store, rms_norm, rotary  # noqa: E402
from localllm.layers.rotary import RotaryEmbedding  # noqa: E402

pytestmark = requires_triton

DTYPES = [torch.float32, torch.bfloat16] + ([torch.float16] if REAL_SHAPES else [])
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1.6e-2, 1e-2), torch.float16: (2e-3, 1e-3)}
ROTARY_ATOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}
ROTARY_EXACT = REAL_SHAPES  # on the GPU the kernel rounds every product and sum as the reference does
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


def _gen(*case) -> torch.Generator:
    """A fresh generator per test case, seeded from the case's parameters."""
    return torch.Generator(device=KERNEL_DEVICE).manual_seed(zlib.crc32(repr(case).encode()))


def _randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=gen, device=KERNEL_DEVICE).to(dtype)


def _poison_allocator(nbytes: int) -> None:
    """On CUDA, leave NaN in the caching allocator's free blocks, where the kernels' torch.empty outputs land."""
    if KERNEL_DEVICE == "cuda":
        torch.full((nbytes // 4 + 1,), float("nan"), device="cuda")


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, atol: float | None = None):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert not actual.isnan().any(), "NaN in output: an element was not written"
    rtol, default_atol = TOLERANCE[dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=default_atol if atol is None else atol)


# --------------------------------------------------------------------------- KV store

KV_TOKENS = [1, 7, 256, 4096] if REAL_SHAPES else [1, 5, 17]
KV_HEADS = [1, 8] if REAL_SHAPES else [1, 2]


@pytest.mark.parametrize("num_tokens", KV_TOKENS)
@pytest.mark.parametrize("num_kv_heads", KV_HEADS)
@pytest.mark.parametrize("head_size", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "fused", "padded_heads"])
def test_store_kv_cache(num_tokens, num_kv_heads, head_size, dtype, layout):
    gen = _gen("kv", num_tokens, num_kv_heads, head_size, dtype, layout)
    block_size = 16
    num_blocks = num_tokens // block_size + 3
    kv_size = num_kv_heads * head_size
    if layout == "fused":  # row-strided views of a [T, (Hq + 2 Hkv) * D] qkv output, Hq = 2 Hkv
        qkv = _randn(gen, num_tokens, 2 * kv_size + 2 * kv_size, dtype=dtype)
        key = qkv[:, 2 * kv_size:3 * kv_size].view(num_tokens, num_kv_heads, head_size)
        value = qkv[:, 3 * kv_size:].view(num_tokens, num_kv_heads, head_size)
    elif layout == "padded_heads":  # head stride != D
        key = _randn(gen, num_tokens, num_kv_heads, head_size + 32, dtype=dtype)[..., 16:16 + head_size]
        value = _randn(gen, num_tokens, num_kv_heads, head_size + 32, dtype=dtype)[..., :head_size]
    else:
        key = _randn(gen, num_tokens, num_kv_heads, head_size, dtype=dtype)
        value = _randn(gen, num_tokens, num_kv_heads, head_size, dtype=dtype)
    slots = torch.randperm(num_blocks * block_size, generator=gen, device=KERNEL_DEVICE)[:num_tokens]
    # Padding tokens: the last quarter (as CUDA-graph padding rows) and one in the middle.
    slots[num_tokens - num_tokens // 4:] = -1
    if num_tokens > 2:
        slots[num_tokens // 2] = -1
    valid = slots >= 0

    kv_cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_size), float("nan"), dtype=dtype,
                          device=KERNEL_DEVICE)
    expected = kv_cache.clone()
    reference.store_kv_cache(key[valid], value[valid], expected, slots[valid])
    kv_store.store_kv_cache(key, value, kv_cache, slots)

    # A store is a copy: exact, and every slot not written still holds NaN.
    torch.testing.assert_close(kv_cache, expected, rtol=0, atol=0, equal_nan=True)
    written = ~kv_cache.isnan()
    assert int(written.sum()) == 2 * int(valid.sum()) * kv_size


def test_store_kv_cache_casts_and_skips_all_padding():
    gen = _gen("kv-cast")
    num_tokens, num_kv_heads, head_size, block_size = 9, 2, 64, 4
    key = _randn(gen, num_tokens, num_kv_heads, head_size)
    value = _randn(gen, num_tokens, num_kv_heads, head_size)
    slots = torch.randperm(4 * block_size, generator=gen, device=KERNEL_DEVICE)[:num_tokens]
    kv_cache = torch.full((2, 4, block_size, num_kv_heads, head_size), float("nan"), dtype=torch.bfloat16,
                          device=KERNEL_DEVICE)
    expected = kv_cache.clone()
    reference.store_kv_cache(key, value, expected, slots)
    kv_store.store_kv_cache(key, value, kv_cache, slots)
    # float32 -> bf16: exact on the GPU; the interpreter truncates instead of rounding (one ulp).
    torch.testing.assert_close(kv_cache, expected, rtol=0 if REAL_SHAPES else 8e-3, atol=0, equal_nan=True)
    assert int((~kv_cache.isnan()).sum()) == 2 * key.numel()

    kv_cache.fill_(float("nan"))
    kv_store.store_kv_cache(key, value, kv_cache, torch.full_like(slots, -1))
    assert kv_cache.isnan().all()


# --------------------------------------------------------------------------- RMSNorm

NORM_ROWS = [1, 5, 17, 4096] if REAL_SHAPES else [1, 5, 17]
NORM_HIDDEN = [576, 4096, 16384] if REAL_SHAPES else [64, 576]


@pytest.mark.parametrize("num_rows", NORM_ROWS)
@pytest.mark.parametrize("hidden", NORM_HIDDEN)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("strided", [False, True])
def test_rms_norm(num_rows, hidden, dtype, with_residual, strided):
    gen = _gen("rms", num_rows, hidden, dtype, with_residual, strided)
    if strided:  # rows of a wider buffer: row stride != hidden
        x = _randn(gen, num_rows, hidden + 64, dtype=dtype)[:, 32:32 + hidden]
    else:
        x = _randn(gen, num_rows, hidden, dtype=dtype)
    weight = _randn(gen, hidden, dtype=dtype)
    residual = _randn(gen, num_rows, hidden, dtype=dtype) if with_residual else None
    x_before = x.clone()
    residual_before = residual.clone() if with_residual else None

    expected = reference.rms_norm(x, weight, 1e-5, residual)
    _poison_allocator(2 * x.numel() * x.element_size())
    actual = rms_norm.rms_norm(x, weight, 1e-5, residual)

    if with_residual:
        _assert_close(actual[0], expected[0], dtype)
        _assert_close(actual[1], expected[1], dtype)
        torch.testing.assert_close(residual, residual_before, rtol=0, atol=0)
    else:
        _assert_close(actual, expected, dtype)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)


def test_rms_norm_3d():
    gen = _gen("rms-3d")
    x = _randn(gen, 2, 3, 576, dtype=torch.bfloat16)
    residual = _randn(gen, 2, 3, 576, dtype=torch.bfloat16)
    weight = _randn(gen, 576, dtype=torch.bfloat16)
    expected = reference.rms_norm(x, weight, 1e-6, residual)
    actual = rms_norm.rms_norm(x, weight, 1e-6, residual)
    _assert_close(actual[0], expected[0], torch.bfloat16)
    _assert_close(actual[1], expected[1], torch.bfloat16)


# --------------------------------------------------------------------------- rotary embedding

ROPE_TOKENS = [1, 17, 4096] if REAL_SHAPES else [1, 5, 17]
ROPE_HEADS = [(32, 8), (4, 1)] if REAL_SHAPES else [(4, 2), (2, 1)]
MAX_POSITION = 16384


def _assert_rotated(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    _assert_close(actual, expected, dtype, ROTARY_ATOL[dtype])
    if ROTARY_EXACT:
        assert torch.equal(actual, expected)


@pytest.mark.parametrize("num_tokens", ROPE_TOKENS)
@pytest.mark.parametrize("num_heads,num_kv_heads", ROPE_HEADS)
@pytest.mark.parametrize("head_size,rot_dim,scaling", [(128, 128, "llama3"), (64, 64, None), (128, 64, None)])
@pytest.mark.parametrize("is_neox_style", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fused", [True, False])
def test_rotary_embedding(num_tokens, num_heads, num_kv_heads, head_size, rot_dim, scaling, is_neox_style, dtype,
                          fused):
    gen = _gen("rope", num_tokens, num_heads, num_kv_heads, head_size, rot_dim, scaling, is_neox_style, dtype, fused)
    rope = RotaryEmbedding(head_size, rot_dim, MAX_POSITION, 500000.0 if scaling else 10000.0,
                           LLAMA3 if scaling else None, dtype, KERNEL_DEVICE, is_neox_style)
    q_size, kv_size = num_heads * head_size, num_kv_heads * head_size
    qkv = _randn(gen, num_tokens, q_size + 2 * kv_size, dtype=dtype)
    if fused:  # query and key are row-strided views of the qkv output, rotated in that buffer
        query, key, _ = qkv.split([q_size, kv_size, kv_size], dim=-1)
    else:
        query, key = qkv[:, :q_size].clone(), qkv[:, q_size:q_size + kv_size].clone()
    positions = torch.randint(0, MAX_POSITION, (num_tokens,), generator=gen, device=KERNEL_DEVICE)
    qkv_before, query_before, key_before = qkv.clone(), query.clone(), key.clone()

    expected_q, expected_k = reference.rotary_embedding(positions, query, key, head_size, rope.cos_sin_cache,
                                                        is_neox_style)
    out_q, out_k = rotary.rotary_embedding(positions, query, key, head_size, rope.cos_sin_cache, is_neox_style)

    assert out_q is query and out_k is key
    _assert_rotated(query, expected_q, dtype)
    _assert_rotated(key, expected_k, dtype)
    # Untouched, bit for bit: dims past rot_dim of every head, and v (or the rest of qkv).
    for after, before in ((query, query_before), (key, key_before)):
        after, before = after.view(num_tokens, -1, head_size), before.view(num_tokens, -1, head_size)
        assert torch.equal(after[..., rot_dim:], before[..., rot_dim:])
    if fused:
        assert torch.equal(qkv[:, q_size + kv_size:], qkv_before[:, q_size + kv_size:])
    else:
        assert torch.equal(qkv, qkv_before)


def test_rotary_embedding_float32_table():
    """A float32 table with bf16 activations: cos/sin are cast to bf16 as in the reference."""
    gen = _gen("rope-f32-table")
    rope = RotaryEmbedding(128, 128, MAX_POSITION, 500000.0, LLAMA3, torch.float32, KERNEL_DEVICE)
    query, key = _randn(gen, 9, 4 * 128, dtype=torch.bfloat16), _randn(gen, 9, 2 * 128, dtype=torch.bfloat16)
    positions = torch.randint(0, MAX_POSITION, (9,), generator=gen, device=KERNEL_DEVICE)
    expected_q, expected_k = reference.rotary_embedding(positions, query, key, 128, rope.cos_sin_cache)
    rotary.rotary_embedding(positions, query, key, 128, rope.cos_sin_cache)
    _assert_rotated(query, expected_q, torch.bfloat16)
    _assert_rotated(key, expected_k, torch.bfloat16)


# --------------------------------------------------------------------------- SiLU-and-mul

SILU_ROWS = [1, 17, 8192] if REAL_SHAPES else [1, 5, 17]
SILU_INTER = [64, 200, 14336] if REAL_SHAPES else [64, 200, 3000]


@pytest.mark.parametrize("num_rows", SILU_ROWS)
@pytest.mark.parametrize("inter", SILU_INTER)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("strided", [False, True])
def test_silu_and_mul(num_rows, inter, dtype, strided):
    gen = _gen("silu", num_rows, inter, dtype, strided)
    if strided:  # rows of a wider buffer: row stride != 2I
        x = (_randn(gen, num_rows, 2 * inter + 16, dtype=dtype) * 3)[:, 16:]
    else:
        x = _randn(gen, num_rows, 2 * inter, dtype=dtype) * 3
    x_before = x.clone()
    expected = reference.silu_and_mul(x)
    _poison_allocator(num_rows * inter * x.element_size())
    actual = activation.silu_and_mul(x)
    _assert_close(actual, expected, dtype)
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)


def test_silu_and_mul_3d():
    gen = _gen("silu-3d")
    x = _randn(gen, 2, 3, 2 * 200, dtype=torch.bfloat16) * 3
    _assert_close(activation.silu_and_mul(x), reference.silu_and_mul(x), torch.bfloat16)
