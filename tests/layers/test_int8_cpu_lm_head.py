import pytest
import torch

from localllm.layers.embedding import LMHead
from localllm.layers.int4_cpu_linear import int4_kernel_available
from localllm.layers.int8_cpu_lm_head import (
    Int8CPULMHead,
    convert_lm_head_to_int8,
    dequantize_int8_groups,
    quantize_int8_groups,
)

pytestmark = pytest.mark.skipif(not int4_kernel_available(), reason="torch has no int4 CPU kernel")


def q8_0_like_weight(n, k, generator):
    """Weights on a llama.cpp Q8_0 grid: per block of 32, d * q with q in -127..127, +-127 present,
    d already a bfloat16 value (so the only rounding left is none)."""
    q = torch.randint(-127, 128, (n, k), generator=generator)
    q[:, ::32] = 127
    q[:, 1::32] = -127
    d = (torch.rand(n, k // 32, 1, generator=generator) * 0.02 + 0.001).to(torch.bfloat16).float()
    return (q.reshape(n, k // 32, 32) * d).reshape(n, k), q, d.squeeze(-1)


def test_q8_0_grid_is_recovered_exactly():
    g = torch.Generator().manual_seed(0)
    w, expected_q, expected_d = q8_0_like_weight(40, 96, g)
    q, d = quantize_int8_groups(w)
    assert torch.equal(q, expected_q.to(torch.int32))
    assert torch.equal(d.float(), expected_d)
    assert torch.equal(dequantize_int8_groups(q, d), w)


@pytest.mark.parametrize("rows", [1, 3, 17])
def test_the_head_multiplies_like_the_8bit_matrix(rows, kernel):
    """x (rounded to bf16, as the kernels read it) times the 8-bit weights. Ours sums in float32;
    torch's two int4 products are each rounded to bf16 on the way out, the only error left."""
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(200, 128, generator=g) * 0.05
    head = Int8CPULMHead(w)
    x = torch.randn(rows, 128, generator=g)
    out = head(x)
    assert out.dtype == torch.float32 and out.shape == (rows, 200)
    q, d = quantize_int8_groups(w)
    reference = x.to(torch.bfloat16).float() @ dequantize_int8_groups(q, d).t()
    tolerance = 1e-5 if kernel == "qgemm" else 2**-7
    torch.testing.assert_close(out, reference, rtol=tolerance, atol=tolerance * reference.abs().max().item())
    # 8 bits: far closer to the float head than the 4-bit bodies are to theirs.
    exact = x @ w.t()
    assert (out - exact).abs().max() < 0.02 * exact.abs().max()


def test_every_code_survives_the_split(kernel):
    """All 255 codes through the head and back, exactly: with d a power of two every product (and
    each of torch's two plane products) is a bf16 value, so no rounding is left. 14 rows also
    exercise the row padding."""
    codes = torch.arange(-127, 128)[:224].reshape(7, 32)
    codes[:, 0] = 127  # every group spans -127..127, so d = 2^-7 exactly
    w = torch.cat([codes, -codes]).float() * 2**-7
    head = Int8CPULMHead(w)
    q, _ = quantize_int8_groups(w)
    assert torch.equal(q, torch.cat([codes, -codes]).to(torch.int32))
    out = head(torch.eye(32)).t()  # row j of the output for input e_j is column j of W: [14, 32]
    torch.testing.assert_close(out, w, rtol=0, atol=0)


def test_near_ties_pick_the_8bit_heads_own_top_token(kernel):
    """Logits a hair apart (far below torch's bf16 output step) still rank as the 8-bit head ranks
    them: ours sums in float32; with torch's, the top candidates are recomputed in float32."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1, 64, generator=g) * 0.3
    rows = base.repeat(48, 1)
    rows[:, 5] += torch.arange(48) * 2**-7  # one code step apart, in the 6th input of group 0
    head = Int8CPULMHead(rows)
    x = torch.zeros(3, 64)
    x[:, 5] = 1.0
    x[:, 40] = torch.tensor([30.0, -30.0, 7.0])  # large shared logits: the bf16 step is ~0.1-0.25
    q, d = quantize_int8_groups(rows)
    reference = x.to(torch.bfloat16).float() @ dequantize_int8_groups(q, d).t()
    out = head(x)
    assert torch.equal(out.argmax(dim=-1), reference.argmax(dim=-1))
    top = reference.argmax(dim=-1)
    torch.testing.assert_close(out.gather(1, top[:, None]), reference.gather(1, top[:, None]), rtol=1e-6, atol=1e-6)


def test_convert_swaps_a_tied_float_head_and_keeps_the_embedding():
    model = torch.nn.Module()
    model.lm_head = LMHead(100, 64, torch.float32, torch.device("cpu"))
    model.lm_head.weight.data.normal_()
    embedding = model.lm_head.weight
    assert convert_lm_head_to_int8(model)
    assert isinstance(model.lm_head, Int8CPULMHead)
    assert model.lm_head(torch.randn(2, 64)).shape == (2, 100)
    assert embedding.dtype == torch.float32  # lookups still read the float table


def test_convert_leaves_heads_it_cannot_group():
    model = torch.nn.Module()
    model.lm_head = LMHead(100, 40, torch.float32, torch.device("cpu"))  # 40 is not a multiple of 32
    model.lm_head.weight.data.normal_()
    assert not convert_lm_head_to_int8(model)
    assert isinstance(model.lm_head, LMHead)


@pytest.mark.parametrize("column_major", [False, True])
def test_the_c_quantizer_gives_the_torch_definitions_bits(column_major):
    from localllm.kernels import cpu_native
    from localllm.layers.int8_cpu_lm_head import quantize_int8_groups_reference

    if cpu_native.library() is None:
        pytest.skip("the C CPU kernels could not be built here")
    g = torch.Generator().manual_seed(12)
    w = torch.randn(80, 256, generator=g) * 0.05
    w[0, :32] = 0.0  # an all-zero group: d = 0, codes 0
    w[1, :32] = (torch.arange(32) - 16) * 0.5  # ties at half a step
    w[2, 32:64] = -2.0
    if column_major:
        w = w.t().contiguous().t()
    q, d = quantize_int8_groups(w)
    q_ref, d_ref = quantize_int8_groups_reference(w)
    assert torch.equal(q, q_ref) and torch.equal(d.view(torch.int16), d_ref.view(torch.int16))
