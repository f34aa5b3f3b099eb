import pytest
import torch

from localllm.layers.int4_cpu_linear import (
    Int4CPULinear,
    convert_linears_to_int4,
    dequantize_int4_groups,
    int4_kernel_available,
    quantize_int4_groups,
)
from localllm.layers.linear import Linear, QKVLinear

pytestmark = pytest.mark.skipif(not int4_kernel_available(), reason="torch has no int4 CPU kernel")


def q4_1_like_weight(n, k, generator):
    """Weights on a llama.cpp Q4_1 grid: per block of 32, d * q + m with q in 0..15, 0 and 15 present."""
    q = torch.randint(0, 16, (n, k), generator=generator)
    q[:, ::32] = 0
    q[:, 1::32] = 15
    d = torch.rand(n, k // 32, 1, generator=generator) * 0.02 + 0.001
    m = -torch.rand(n, k // 32, 1, generator=generator) * 0.1
    return (q.reshape(n, k // 32, 32) * d + m).reshape(n, k), d, m


def test_q4_1_grid_is_recovered_exactly_up_to_bf16_scales():
    g = torch.Generator().manual_seed(0)
    w, d, m = q4_1_like_weight(48, 128, g)
    q, sz = quantize_int4_groups(w)
    scale = sz[..., 0].float().t()
    assert torch.allclose(scale, d.squeeze(-1), rtol=2**-8)
    back = dequantize_int4_groups(q, sz)
    # Only the bf16 rounding of scale and zero separates us from the file's grid.
    assert (back - w).abs().max() < 0.01 * w.abs().max()
    # The integer codes are the file's codes.
    expected_q = torch.round((w.reshape(48, 4, 32) - m) / d).reshape(48, 128)
    assert torch.equal(q, expected_q.to(torch.int32))


@pytest.mark.parametrize("m_rows", [1, 5, 33])
@pytest.mark.parametrize("bias", [False, True])
def test_kernel_matches_reference(m_rows, bias, kernel):
    g = torch.Generator().manual_seed(m_rows)
    linear = Linear(128, 96, bias, torch.float32, torch.device("cpu"))
    linear.weight.data.copy_(torch.randn(96, 128, generator=g) * 0.05)
    if bias:
        linear.bias.data.copy_(torch.randn(96, generator=g))
    fast = Int4CPULinear(linear)
    x = torch.randn(m_rows, 128, generator=g)
    out = torch.full((m_rows, 96), float("nan"))
    out.copy_(fast(x))
    q, sz = quantize_int4_groups(linear.weight.data)
    ref = x.to(torch.bfloat16).float() @ dequantize_int4_groups(q, sz).t()
    if bias:
        ref = ref + linear.bias
    if kernel == "qgemm":  # float32 out: float32 accumulation error only
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    else:  # bfloat16 out
        torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    # And close to the float layer it replaced (4-bit rounding error only).
    assert (out - linear(x)).abs().max() < 0.15 * linear(x).abs().max()


def test_convert_swaps_fused_linears_and_keeps_shapes():
    model = torch.nn.Module()
    model.qkv_proj = QKVLinear(64, 16, 4, 2, False, torch.float32, torch.device("cpu"))
    model.qkv_proj.weight.data.normal_()
    model.odd = Linear(40, 8, False, torch.float32, torch.device("cpu"))  # 40 is not a multiple of 32
    model.odd.weight.data.normal_()
    assert convert_linears_to_int4(model) == 1
    assert isinstance(model.qkv_proj, Int4CPULinear) and isinstance(model.odd, Linear)
    assert model.qkv_proj(torch.randn(3, 64)).shape == (3, 16 * 4 + 2 * 16 * 2)


def test_leading_dims_are_kept(kernel):
    g = torch.Generator().manual_seed(7)
    linear = Linear(128, 96, True, torch.float32, torch.device("cpu"))
    linear.weight.data.copy_(torch.randn(96, 128, generator=g) * 0.05)
    linear.bias.data.copy_(torch.randn(96, generator=g))
    fast = Int4CPULinear(linear)
    x = torch.randn(2, 3, 128, generator=g)
    out = fast(x)
    assert out.shape == (2, 3, 96)
    torch.testing.assert_close(out, fast(x.reshape(6, 128)).reshape(2, 3, 96), atol=0, rtol=0)


@pytest.mark.parametrize("column_major", [False, True])
def test_the_c_quantizer_gives_the_torch_definitions_bits(column_major):
    from localllm.kernels import cpu_native
    from localllm.layers.int4_cpu_linear import quantize_int4_groups_reference

    if cpu_native.library() is None:
        pytest.skip("the C CPU kernels could not be built here")
    g = torch.Generator().manual_seed(11)
    w = torch.randn(80, 256, generator=g) * 0.05
    w[0, :32] = 0.0  # a flat group: the 1e-12 floor
    w[1, :32] = torch.arange(32) * (1 / 15)  # codes on exact ties between grid points
    w[2, 32:64] = -3.0
    if column_major:
        w = w.t().contiguous().t()
    q, sz = quantize_int4_groups(w)
    q_ref, sz_ref = quantize_int4_groups_reference(w)
    assert torch.equal(q, q_ref) and torch.equal(sz.view(torch.int16), sz_ref.view(torch.int16))
