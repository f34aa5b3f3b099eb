"""The W4A16 kernel (GEMV for one row, split-K tall-skinny tiles up to 16 rows, tiled GEMM beyond)
against `kernels.reference.w4a16_matmul` on fresh random weights over a grid of shapes, group
sizes and bit widths; and the FP8 op against its reference.

Small shapes under Triton's interpreter on the CPU, Llama-3-8B layer shapes on a GPU. Tolerances
are relative to the output's norm: both sides round the dequantized weight to x's dtype and
accumulate in float32, so fp32 agrees to ~1e-6; bf16 outputs are rounded once more (2^-8) and the
interpreter truncates bf16 casts, so 1e-2. An indexing, shift or group bug is off by O(1).
"""

from __future__ import annotations

import zlib

import pytest
import torch

from tests.kernels.conftest import KERNEL_DEVICE, REAL_SHAPES, requires_triton

pytest.importorskip("triton")

from localllm.kernels import ops, reference  # noqa: E402
from localllm.kernels.triton import w4a16  # noqa: E402

pytestmark = requires_triton

DTYPES = [torch.float32, torch.bfloat16] + ([torch.float16] if REAL_SHAPES else [])
REL_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
if REAL_SHAPES:  # Llama-3-8B: qkv, o, gate_up, down
    SHAPES = [(4096, 6144, 128), (4096, 4096, 128), (4096, 28672, 128), (14336, 4096, 128)]
    ROWS = [1, 4, 16, 64, 200]
else:
    SHAPES = [(128, 64, 32), (192, 80, 64), (512, 48, 128), (256, 96, 256)]
    ROWS = [1, 2, 16, 17, 40]


def _gen(*case) -> torch.Generator:
    """Fresh per case, on the kernel's device (Llama-sized weights are made where they are used)."""
    return torch.Generator(device=KERNEL_DEVICE).manual_seed(zlib.crc32(repr(case).encode()))


def _packed_weights(k: int, n: int, group: int, bits: int, dtype, gen):
    per_word = 32 // bits
    device = KERNEL_DEVICE
    q = torch.randint(0, 1 << bits, (k // per_word, per_word, n), generator=gen, dtype=torch.int64, device=device)
    shifts = (torch.arange(per_word, device=device) * bits).view(1, -1, 1)
    words = (q << shifts).sum(1)
    qweight = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    scales = (torch.rand(k // group, n, generator=gen, device=device) * 0.02 + 0.001).to(dtype)
    zeros = torch.randint(0, 1 << bits, (k // group, n), generator=gen, device=device).to(torch.uint8)
    return qweight, scales, zeros


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-12))


@pytest.mark.parametrize("k,n,group", SHAPES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("bits", [4, 8, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_w4a16_matches_reference(k, n, group, rows, bits, dtype):
    if REAL_SHAPES and bits != 4 and rows not in (1, 16):
        pytest.skip("other bit widths: a few row counts suffice")
    gen = _gen("w4a16", k, n, group, rows, bits, dtype)
    qweight, scales, zeros = _packed_weights(k, n, group, bits, dtype, gen)
    x = torch.randn(rows, k, generator=gen, device=KERNEL_DEVICE).to(dtype)
    if KERNEL_DEVICE == "cuda":
        torch.full((rows * n + 1,), float("nan"), device="cuda")  # NaN in the allocator's free blocks
    got = w4a16.w4a16_matmul(x, qweight, scales, zeros, group, bits)
    want = reference.w4a16_matmul(x, qweight, scales, zeros, group, bits)
    assert got.dtype == dtype and got.shape == (rows, n)
    assert not got.isnan().any(), "NaN in output: an element was not written"
    assert _rel_err(got, want) < REL_TOL[dtype]


def test_w4a16_split_k_path_is_exercised():
    """A decode-shaped problem with few column blocks splits K across programs (atomics)."""
    assert w4a16._split_k(num_programs=1, k_tiles=8, device=torch.device(KERNEL_DEVICE)) > 1
    assert w4a16._split_k(num_programs=10_000, k_tiles=8, device=torch.device(KERNEL_DEVICE)) == 1


def test_ops_dispatch_and_checks():
    gen = _gen("ops")
    qweight, scales, zeros = _packed_weights(128, 64, 32, 4, torch.float32, gen)
    x = torch.randn(3, 128, generator=gen, device=KERNEL_DEVICE)
    with ops.use_backend("triton"):
        triton_out = ops.w4a16_matmul(x, qweight, scales, zeros, 32, 4)
    with ops.use_backend("reference"):
        reference_out = ops.w4a16_matmul(x, qweight, scales, zeros, 32, 4)
    assert _rel_err(triton_out, reference_out) < 1e-5
    with pytest.raises(ValueError, match="group_size 48 must divide"):
        ops.w4a16_matmul(x, qweight, scales, zeros, 48, 4)
    with pytest.raises(ValueError, match="qweight must be int32"):
        ops.w4a16_matmul(x, qweight.float(), scales, zeros, 32, 4)
    with pytest.raises(ValueError, match="scales must be"):
        ops.w4a16_matmul(x, qweight, scales.half(), zeros, 32, 4)
    with pytest.raises(ValueError, match="bits must be"):
        ops.w4a16_matmul(x, qweight, scales, zeros, 32, 3)


# --------------------------------------------------------------------------- FP8


def test_fp8_per_token_quantization():
    gen = torch.Generator().manual_seed(11)  # the reference ops, on the CPU
    x = torch.randn(7, 256, generator=gen) * torch.logspace(-2, 2, 7)[:, None]
    x[3] = 0.0  # an all-zero row keeps a finite scale
    q, scale = reference.quantize_fp8_per_token(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (7, 1)
    assert torch.isfinite(scale).all()
    back = q.float() * scale
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 of each value (plus the subnormal floor)
    assert ((back - x).abs() <= x.abs() * 2**-4 + scale * 2**-9).all()
    assert (q.float().abs().amax(dim=1)[[0, 1, 2, 4, 5, 6]] == 448).all()  # the row max maps to e4m3's max


def test_fp8_linear_reference_is_close_to_float():
    gen = torch.Generator().manual_seed(12)
    w = torch.randn(64, 256, generator=gen) * 0.05
    wscale = w.abs().amax(dim=1) / 448
    wq = (w / wscale[:, None]).to(torch.float8_e4m3fn)
    x, bias = torch.randn(5, 256, generator=gen), torch.randn(64, generator=gen)
    y = ops.fp8_linear(x, wq, wscale.float(), None, bias)
    exact = x @ w.t() + bias
    assert _rel_err(y, exact) < 0.05
    # The float32 cache of FP8 values (the CPU layer's) gives exactly the same answer.
    torch.testing.assert_close(ops.fp8_linear(x, wq.float(), wscale.float(), None, bias), y, rtol=0, atol=0)
    static = ops.fp8_linear(x, wq, wscale.float(), (x.abs().max() / 448).reshape(()), bias)
    assert _rel_err(static, exact) < 0.08
    with pytest.raises(ValueError, match="weight_scale must be float32"):
        ops.fp8_linear(x, wq, wscale.half(), None, bias)


@pytest.mark.skipif(not (torch.cuda.is_available() and ops.fp8_supported(torch.device("cuda"))),
                    reason="needs a CUDA card with FP8 (compute capability 8.9+)")
@pytest.mark.parametrize("rows", [1, 16, 300])
def test_fp8_scaled_mm_matches_reference(rows):
    gen = torch.Generator(device="cuda").manual_seed(rows)
    w = torch.randn(4096, 4096, device="cuda", generator=gen) * 0.02
    wscale = (w.abs().amax(dim=1) / 448).float()
    wq = (w / wscale[:, None]).to(torch.float8_e4m3fn)
    x = torch.randn(rows, 4096, device="cuda", generator=gen).to(torch.bfloat16)
    got = ops.fp8_linear(x, wq, wscale)
    with ops.use_backend("reference"):
        want = ops.fp8_linear(x, wq, wscale)
    assert _rel_err(got, want) < 1e-2


# --------------------------------------------------------------------------- FP8 weight-only (W8A16)


def _fp8_weights(n: int, k: int, gen):
    w = torch.randn(n, k, generator=gen, device=KERNEL_DEVICE) * 0.05
    w[0, 0] = 0.4  # a row whose amax sets a larger scale
    scale = (w.abs().amax(dim=1) / 448).float()
    return (w / scale[:, None]).to(torch.float8_e4m3fn), scale


@pytest.mark.parametrize("k,n", [(k, n) for k, n, _ in SHAPES] + ([] if REAL_SHAPES else [(100, 37)]))
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fp8_w8a16_matches_reference(k, n, rows, dtype):
    """The W4A16 kernels' FP8 mode (weights [N, K] as stored, a scale per output row): GEMV,
    split-K tiles and the tiled GEMM against reference.fp8_weight_only_linear; (100, 37): K and N
    that no tile divides."""
    gen = _gen("w8a16", k, n, rows, dtype)
    weight, scale = _fp8_weights(n, k, gen)
    x = torch.randn(rows, k, generator=gen, device=KERNEL_DEVICE).to(dtype)
    if KERNEL_DEVICE == "cuda":
        torch.full((rows * n + 1,), float("nan"), device="cuda")  # NaN in the allocator's free blocks
    got = w4a16.fp8_w8a16_matmul(x, weight, scale)
    want = reference.fp8_weight_only_linear(x, weight, scale)
    assert got.dtype == dtype and got.shape == (rows, n)
    assert not got.isnan().any(), "NaN in output: an element was not written"
    assert _rel_err(got, want) < REL_TOL[dtype]


def test_fp8_weight_only_op_dispatch_bias_and_checks():
    gen = _gen("w8a16-ops")
    weight, scale = _fp8_weights(48, 64, gen)
    x = torch.randn(3, 64, generator=gen, device=KERNEL_DEVICE)
    bias = torch.randn(48, generator=gen, device=KERNEL_DEVICE)
    with ops.use_backend("triton"):
        triton_out = ops.fp8_weight_only_linear(x, weight, scale, bias)
    with ops.use_backend("reference"):
        reference_out = ops.fp8_weight_only_linear(x, weight, scale, bias)
    assert _rel_err(triton_out, reference_out) < 1e-5
    exact = x @ (weight.float() * scale[:, None]).t() + bias
    assert _rel_err(reference_out, exact) < 1e-6  # float32: the dequantized weight is exact
    # The float32 cache of FP8 values (the CPU layer's) gives exactly the reference's answer.
    torch.testing.assert_close(ops.fp8_weight_only_linear(x, weight.float(), scale, bias), reference_out,
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="weight_scale must be float32"):
        ops.fp8_weight_only_linear(x, weight, scale.half())
    with pytest.raises(ValueError, match="must agree on K"):
        ops.fp8_weight_only_linear(x[:, :32], weight, scale)
