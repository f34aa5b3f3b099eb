"""The CPU quantized-weight GEMM (kernels/cpu/qgemm.c) against its float64 definition, and the
invariant the engine relies on: a row's result never depends on the other rows or the threads."""

import pytest
import torch

from localllm.kernels import cpu_qgemm

pytestmark = pytest.mark.skipif(not cpu_qgemm.available(), reason="no AVX512-BF16 CPU kernels here")


def int4_weight(n, k, group, generator):
    q = torch.randint(0, 16, (n, k), generator=generator, dtype=torch.int32)
    scale = torch.rand(k // group, n, generator=generator) * 0.02 + 1e-3
    zero = (torch.rand(k // group, n, generator=generator) - 0.5) * 0.1
    return q, torch.stack([scale, zero], dim=-1).to(torch.bfloat16)


def int8_weight(n, k, group, generator):
    q = torch.randint(-127, 128, (n, k), generator=generator, dtype=torch.int32)
    return q, (torch.rand(n, k // group, generator=generator) * 0.02 + 1e-3).to(torch.bfloat16)


def assert_float32_accurate(out, x, weight64):
    """|out - x . W| within float32 accumulation error: K * 2^-23 of sum_k |x_k w_k|, per element."""
    x64 = x.double()
    reference = x64 @ weight64.t()
    bound = (x64.abs() @ weight64.abs().t()) * (x.shape[1] * 2.0**-23) + 1e-30
    assert ((out.double() - reference).abs() <= bound).all()


# rows 1..8, 9, 16, 17 and 35 reach every row-block variant (16-row blocks in the lanes layout,
# the rest in the column layout); 40 and 200 columns leave partial panels and tails of panels in
# the last group of four; 64-wide groups as well as 32
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 35])
@pytest.mark.parametrize("n,k,group", [(40, 64, 32), (200, 128, 32), (96, 256, 64)])
def test_int4_matches_its_float64_definition(m, n, k, group):
    g = torch.Generator().manual_seed(m * 1000 + n)
    q, scale_zero = int4_weight(n, k, group, g)
    packed = cpu_qgemm.pack_int4(q, scale_zero, group)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    out = cpu_qgemm.int4_mm(x, packed, torch.float32)
    assert out.shape == (m, n) and out.dtype == torch.float32
    assert_float32_accurate(out, x, cpu_qgemm.dequantize_int4(q, scale_zero, group))
    # bfloat16 out: the float32 result, rounded as torch rounds
    assert torch.equal(cpu_qgemm.int4_mm(x, packed, torch.bfloat16), out.to(torch.bfloat16))


@pytest.mark.parametrize("m", [1, 3, 8, 13, 16, 33])
@pytest.mark.parametrize("n,k", [(40, 64), (1000, 96)])
def test_int8_matches_its_float64_definition(m, n, k):
    g = torch.Generator().manual_seed(m * 7 + n)
    q, d = int8_weight(n, k, 32, g)
    packed = cpu_qgemm.pack_int8(q, d, 32)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    out = cpu_qgemm.int8_mm(x, packed)
    assert out.shape == (m, n) and out.dtype == torch.float32
    assert_float32_accurate(out, x, cpu_qgemm.dequantize_int8(q, d, 32))


def test_every_code_and_extreme_scales_are_exact():
    """Codes 0..15 (and -127..127) with power-of-two scales and one-hot inputs: every product and
    sum is exact, so the output is the weight itself, bit for bit."""
    q4 = torch.arange(16, dtype=torch.int32).repeat(32, 4)  # [32, 64]
    scale_zero = torch.stack([torch.full((2, 32), 2.0**-6), torch.full((2, 32), -(2.0**-3))], dim=-1)
    packed = cpu_qgemm.pack_int4(q4, scale_zero.to(torch.bfloat16), 32)
    eye = torch.eye(64).to(torch.bfloat16)
    expected = cpu_qgemm.dequantize_int4(q4, scale_zero, 32).float().t()
    assert torch.equal(cpu_qgemm.int4_mm(eye, packed, torch.float32), expected)
    q8 = torch.arange(-127, 128, dtype=torch.int32)[:224].reshape(7, 32)
    d = torch.full((7, 1), 2.0**-7)
    packed8 = cpu_qgemm.pack_int8(q8, d.to(torch.bfloat16), 32)
    assert torch.equal(cpu_qgemm.int8_mm(torch.eye(32).to(torch.bfloat16), packed8), (q8.float() * 2.0**-7).t())


def test_a_rows_result_does_not_depend_on_the_batch_or_the_threads():
    g = torch.Generator().manual_seed(5)
    q, scale_zero = int4_weight(600, 192, 32, g)
    packed = cpu_qgemm.pack_int4(q, scale_zero, 32)
    q8, d = int8_weight(600, 192, 32, g)
    packed8 = cpu_qgemm.pack_int8(q8, d, 32)
    x = torch.randn(19, 192, generator=g).to(torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        for mm, weights in ((cpu_qgemm.int4_mm, packed), (cpu_qgemm.int8_mm, packed8)):
            batch = mm(x, weights, torch.float32)
            for size in (1, 2, 3, 5, 8):
                for start in range(0, 19 - size + 1, 4):
                    assert torch.equal(mm(x[start:start + size], weights, torch.float32), batch[start:start + size])
            torch.set_num_threads(1)
            assert torch.equal(mm(x, weights, torch.float32), batch)
            torch.set_num_threads(threads)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("group", [32, 512])
def test_both_register_layouts_give_the_same_bits(group):
    """Blocks of 16 rows put the rows in the lanes, the other rows the columns (and every row when
    the group is over 256): each row of a 35-row batch equals that row alone, bit for bit, at 4 and 8
    bits, with the lanes blocks' pairs gathered across threads."""
    g = torch.Generator().manual_seed(group)
    q, scale_zero = int4_weight(72, 1024, group, g)
    q8, d = int8_weight(72, 1024, group, g)
    x = torch.randn(35, 1024, generator=g).to(torch.bfloat16)
    for mm, weights in ((cpu_qgemm.int4_mm, cpu_qgemm.pack_int4(q, scale_zero, group)),
                        (cpu_qgemm.int8_mm, cpu_qgemm.pack_int8(q8, d, group))):
        batch = mm(x, weights, torch.float32)
        alone = torch.cat([mm(x[i:i + 1], weights, torch.float32) for i in range(35)])
        assert torch.equal(batch, alone)


def test_strided_rows_in_and_out():
    g = torch.Generator().manual_seed(9)
    q, scale_zero = int4_weight(48, 64, 32, g)
    packed = cpu_qgemm.pack_int4(q, scale_zero, 32)
    wide = torch.randn(5, 100, generator=g).to(torch.bfloat16)
    x = wide[:, 10:74]  # row stride 100
    out = torch.full((5, 60), float("nan"))
    cpu_qgemm.int4_mm(x, packed, torch.float32, out=out[:, 4:52])
    assert torch.equal(out[:, 4:52], cpu_qgemm.int4_mm(x.contiguous(), packed, torch.float32))
    assert out[:, :4].isnan().all() and out[:, 52:].isnan().all()


def test_bad_inputs_are_refused_with_a_reason():
    g = torch.Generator().manual_seed(1)
    q, scale_zero = int4_weight(16, 64, 32, g)
    packed = cpu_qgemm.pack_int4(q, scale_zero, 32)
    with pytest.raises(ValueError, match="bfloat16"):
        cpu_qgemm.int4_mm(torch.randn(2, 64), packed)
    with pytest.raises(ValueError, match="64"):
        cpu_qgemm.int4_mm(torch.randn(2, 32).to(torch.bfloat16), packed)
    with pytest.raises(ValueError, match="divisible"):
        cpu_qgemm.pack_int4(q[:, :48], scale_zero, 32)


@pytest.mark.parametrize("n,k", [(40, 64), (33, 128), (16, 32)])
def test_the_c_packers_give_the_torch_layouts_bytes(n, k):
    g = torch.Generator().manual_seed(n + k)
    q4 = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int32)
    q8 = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int32)
    scale_zero = torch.rand(k // 32, n, 2, generator=g).to(torch.bfloat16)
    assert torch.equal(cpu_qgemm.pack_int4(q4, scale_zero, 32).codes, cpu_qgemm.pack_int4_codes_reference(q4))
    d = torch.rand(n, k // 32, generator=g).to(torch.bfloat16)
    assert torch.equal(cpu_qgemm.pack_int8(q8, d, 32).codes, cpu_qgemm.pack_int8_codes_reference(q8))
