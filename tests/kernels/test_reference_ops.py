"""kernels.ops against naive, loop-by-loop float64 definitions, on two backends: the torch
reference, and the C CPU kernels that the auto backend runs on float32 CPU tensors.

Fresh random inputs over a grid of shapes; every cache slot not written by the test holds NaN, so
an op that reads past a sequence's length, or a padding block, shows up as NaN in its output.
"""

from __future__ import annotations

import math

import pytest
import torch

from localllm.kernels import cpu_native, ops, reference


@pytest.fixture(autouse=True, params=["reference", "native"])
def backend(request):
    if request.param == "native" and cpu_native.library() is None:
        pytest.skip("the C CPU kernels could not be built on this machine")
    with ops.use_backend("reference" if request.param == "reference" else "auto"):
        yield request.param

# --------------------------------------------------------------------------- paged attention


def _naive_paged_attention(query, kv_cache, block_table, query_lens, seq_lens, scale):
    """Token by token, head by head, in float64, reading the cache slot by slot."""
    block_size = kv_cache.shape[2]
    num_heads, num_kv_heads = query.shape[1], kv_cache.shape[3]
    group = num_heads // num_kv_heads
    out = torch.empty(query.shape, dtype=torch.float64)
    row = 0
    for i, (query_len, seq_len) in enumerate(zip(query_lens, seq_lens)):
        slots = [(int(block_table[i, p // block_size]), p % block_size) for p in range(seq_len)]
        keys = torch.stack([kv_cache[0, b, o] for b, o in slots]).double()  # [L, Hkv, D]
        values = torch.stack([kv_cache[1, b, o] for b, o in slots]).double()
        for j in range(query_len):
            visible = seq_len - query_len + j + 1
            for h in range(num_heads):
                q = query[row + j, h].double()
                scores = keys[:visible, h // group] @ q * scale
                out[row + j, h] = torch.softmax(scores, 0) @ values[:visible, h // group]
        row += query_len
    return out


def _make_batch(query_lens, seq_lens, num_heads, num_kv_heads, head_size, block_size, seed):
    """A NaN-poisoned cache holding seq_lens[i] tokens of each sequence in scattered blocks."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [math.ceil(s / block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3
    kv_cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_size), float("nan"))
    order = torch.randperm(num_blocks, generator=gen).tolist()
    max_blocks = max(blocks_per_seq) + 1
    block_table = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)  # padding: block 0
    for i, n in enumerate(blocks_per_seq):
        block_table[i, :n] = torch.tensor(order[:n], dtype=torch.int32)
        order = order[n:]
    slots = [int(block_table[i, p // block_size]) * block_size + p % block_size
             for i, s in enumerate(seq_lens) for p in range(s)]
    num_slots = len(slots)
    keys = torch.randn(num_slots, num_kv_heads, head_size, generator=gen)
    values = torch.randn(num_slots, num_kv_heads, head_size, generator=gen)
    ops.store_kv_cache(keys, values, kv_cache, torch.tensor(slots, dtype=torch.int64))
    query = torch.randn(sum(query_lens), num_heads, head_size, generator=gen)
    starts = [0]
    for q in query_lens:
        starts.append(starts[-1] + q)
    return query, kv_cache, block_table, starts


ATTENTION_CASES = {
    # name: (query_lens, seq_lens)
    "decode": ([1, 1, 1, 1], [1, 17, 40, 16]),
    "decode_one": ([1], [37]),  # every sequence full length: the unmasked path
    "decode_equal": ([1, 1, 1], [21, 21, 21]),
    "prefill": ([5, 1, 33], [5, 1, 33]),
    "chunked": ([7, 16, 3], [40, 48, 19]),
    "mixed": ([1, 9, 1, 1, 4], [30, 9, 1, 65, 70]),
}


@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
@pytest.mark.parametrize("head_size", [64, 128])
@pytest.mark.parametrize("num_kv_heads,group", [(2, 1), (1, 4), (2, 8)])
@pytest.mark.parametrize("block_size", [16, 32])
def test_paged_attention(case, head_size, num_kv_heads, group, block_size):
    query_lens, seq_lens = ATTENTION_CASES[case]
    num_heads = num_kv_heads * group
    query, kv_cache, block_table, starts = _make_batch(
        query_lens, seq_lens, num_heads, num_kv_heads, head_size, block_size, seed=len(case) * 131 + head_size + 7 * group + block_size
    )
    scale = head_size**-0.5
    out = ops.paged_attention(
        query, kv_cache,
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_table=block_table, scale=scale,
        max_query_len=max(query_lens), max_seq_len=max(seq_lens),
        query_start_loc_cpu=starts, seq_lens_cpu=list(seq_lens),
    )
    expected = _naive_paged_attention(query, kv_cache, block_table, query_lens, seq_lens, scale)
    assert out.shape == query.shape and out.dtype == query.dtype
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("case", ["decode", "decode_one", "mixed", "chunked"])
def test_paged_attention_over_a_bfloat16_cache(case):
    """A float32 model with a bfloat16 KV cache (CacheConfig.kv_cache_dtype): keys and values are
    rounded as they are stored, then read widened; the result is attention over the rounded values."""
    query_lens, seq_lens = ATTENTION_CASES[case]
    query, kv_cache, block_table, starts = _make_batch(query_lens, seq_lens, 8, 2, 64, 16, seed=77)
    rounded = kv_cache.to(torch.bfloat16)
    kwargs = dict(query_start_loc=torch.tensor(starts, dtype=torch.int32),
                  seq_lens=torch.tensor(seq_lens, dtype=torch.int32), block_table=block_table, scale=0.125,
                  max_query_len=max(query_lens), max_seq_len=max(seq_lens), query_start_loc_cpu=starts,
                  seq_lens_cpu=list(seq_lens))
    out = ops.paged_attention(query, rounded, **kwargs)
    assert out.dtype == torch.float32
    expected = _naive_paged_attention(query, rounded.float(), block_table, query_lens, seq_lens, 0.125)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)
    if max(query_lens) == 1:  # decode: the C kernel under auto, bitwise the float32 widening
        assert torch.equal(out, ops.paged_attention(query, rounded.float(), **kwargs))
    fresh = torch.zeros_like(rounded)
    slot_keys = torch.randn(3, 2, 64)
    ops.store_kv_cache(slot_keys, -slot_keys, fresh, torch.tensor([0, 17, 40]))
    assert torch.equal(fresh[0, 1, 1], slot_keys[1].to(torch.bfloat16))


def _decode(query, kv_cache, block_table, seq_lens, max_seq_len):
    num_seqs = query.shape[0]
    return ops.paged_attention(
        query, kv_cache,
        query_start_loc=torch.arange(num_seqs + 1, dtype=torch.int32),
        seq_lens=seq_lens, block_table=block_table, scale=0.125,
        max_query_len=1, max_seq_len=max_seq_len,
        query_start_loc_cpu=list(range(num_seqs + 1)), seq_lens_cpu=seq_lens.tolist(),
    )


def test_decode_attention_sees_in_place_updates_between_calls():
    """The CPU path keeps the step's gather slots across layers; a block table or seq_lens
    changed in place (the next step, reusing buffers) must not be served stale slots."""
    query_lens, seq_lens = [1, 1], [20, 33]
    query, kv_cache, block_table, _ = _make_batch(query_lens, seq_lens, 4, 2, 64, 16, seed=5)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    first = _decode(query, kv_cache, block_table, lens, max_seq_len=40)  # an upper bound
    torch.testing.assert_close(
        first.double(), _naive_paged_attention(query, kv_cache, block_table, query_lens, seq_lens, 0.125),
        atol=2e-5, rtol=1e-4)
    lens.copy_(torch.tensor([33, 13], dtype=torch.int32))  # same tensor, new contents
    block_table[[0, 1]] = block_table[[1, 0]].clone()  # swap the two sequences' blocks
    second = _decode(query, kv_cache, block_table, lens, max_seq_len=33)
    expected = _naive_paged_attention(query, kv_cache, block_table, query_lens, [33, 13], 0.125)
    torch.testing.assert_close(second.double(), expected, atol=2e-5, rtol=1e-4)


def test_decode_attention_sees_a_block_table_rewritten_in_place():
    """Same tensors, same lengths, new block contents: only the block table tells the steps apart."""
    query_lens, seq_lens = [1, 1], [20, 20]
    query, kv_cache, block_table, _ = _make_batch(query_lens, seq_lens, 4, 2, 64, 16, seed=9)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    _decode(query, kv_cache, block_table, lens, max_seq_len=20)
    block_table[[0, 1]] = block_table[[1, 0]].clone()
    out = _decode(query, kv_cache, block_table, lens, max_seq_len=20)
    expected = _naive_paged_attention(query, kv_cache, block_table, query_lens, seq_lens, 0.125)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)


def test_paged_attention_rejects_bad_shapes():
    query, kv_cache, block_table, starts = _make_batch([1], [3], 4, 2, 64, 16, seed=0)
    args = dict(query_start_loc=torch.tensor(starts, dtype=torch.int32), seq_lens=torch.tensor([3], dtype=torch.int32),
                block_table=block_table, scale=0.1, max_query_len=1, max_seq_len=3,
                query_start_loc_cpu=starts, seq_lens_cpu=[3])
    with pytest.raises(ValueError, match="multiple of kv heads"):
        ops.paged_attention(query[:, :3], kv_cache, **args)
    with pytest.raises(ValueError, match="block_table must be int32"):
        ops.paged_attention(query, kv_cache, **{**args, "block_table": block_table.long()})


# --------------------------------------------------------------------------- KV store


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_size", [64, 128])
def test_store_kv_cache_writes_only_its_slots(block_size, head_size):
    gen = torch.Generator().manual_seed(1)
    kv_cache = torch.full((2, 6, block_size, 2, head_size), float("nan"))
    slots = torch.tensor([0, 5, block_size + 1, 3 * block_size + block_size - 1, 5 * block_size], dtype=torch.int64)
    key = torch.randn(5, 2, head_size, generator=gen)
    value = torch.randn(5, 2, head_size, generator=gen)
    ops.store_kv_cache(key, value, kv_cache, slots)
    for t, slot in enumerate(slots.tolist()):
        b, o = divmod(slot, block_size)
        assert torch.equal(kv_cache[0, b, o], key[t]) and torch.equal(kv_cache[1, b, o], value[t])
    written = torch.zeros(6 * block_size, dtype=torch.bool)
    written[slots] = True
    assert kv_cache.view(2, -1, 2, head_size)[:, ~written].isnan().all()


# --------------------------------------------------------------------------- RMSNorm


@pytest.mark.parametrize("hidden", [64, 576])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm(hidden, dtype):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(7, hidden, generator=gen).to(dtype)
    residual = torch.randn(7, hidden, generator=gen).to(dtype)
    weight = torch.randn(hidden, generator=gen).to(dtype)
    eps = 1e-5

    def naive(h):
        h = h.double()
        return h / torch.sqrt((h * h).mean(-1, keepdim=True) + eps) * weight.double()

    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=5e-2, rtol=2e-2)
    out = ops.rms_norm(x, weight, eps)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), naive(x), **tol)
    out, new_residual = ops.rms_norm(x, weight, eps, residual)
    assert out.dtype == dtype and new_residual.dtype == dtype
    torch.testing.assert_close(new_residual, x + residual)
    torch.testing.assert_close(out.double(), naive(x + residual), **tol)


@pytest.mark.parametrize("rows,hidden", [(1, 576), (37, 960), (5, 4096)])
def test_rms_norm_float32_is_bitwise_hf(rows, hidden, backend):
    """The reference's parity with transformers in float32 is exact: its fused path must compute
    HF's expression. (The C kernel sums the squares in another order: test_rms_norm bounds it.)"""
    if backend == "native":
        pytest.skip("the C kernel agrees to rounding, not bit for bit")
    gen = torch.Generator().manual_seed(rows + hidden)
    x = torch.randn(rows, hidden, generator=gen) * torch.rand(rows, 1, generator=gen) * 30
    weight = torch.randn(hidden, generator=gen)
    eps = 1e-6
    hf = weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    assert torch.equal(ops.rms_norm(x, weight, eps), hf)


# --------------------------------------------------------------------------- rotary embedding


def _cos_sin_cache(max_position, rot_dim, base=10000.0):
    inv_freq = 1.0 / base ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim)
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float64), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


def _naive_rotary(positions, x, head_size, cache, neox):
    out = x.double().clone().view(x.shape[0], -1, head_size)
    rot_dim = cache.shape[1]
    half = rot_dim // 2
    for t, p in enumerate(positions.tolist()):
        for i in range(half):
            c, s = cache[p, i].item(), cache[p, half + i].item()
            a, b = (i, i + half) if neox else (2 * i, 2 * i + 1)
            x1, x2 = out[t, :, a].clone(), out[t, :, b].clone()
            out[t, :, a] = x1 * c - x2 * s
            out[t, :, b] = x2 * c + x1 * s
    return out.view(x.shape)


def test_rotary_float32_is_bitwise_hf():
    """HF Llama: q * cos + rotate_half(q) * sin, with cos/sin the duplicated halves."""
    gen = torch.Generator().manual_seed(3)
    cache = _cos_sin_cache(128, 64).float()
    positions = torch.tensor([5, 17, 63], dtype=torch.int64)
    query, key = torch.randn(3, 9 * 64, generator=gen), torch.randn(3, 3 * 64, generator=gen)
    cos, sin = cache[positions].chunk(2, dim=-1)
    cos, sin = torch.cat((cos, cos), -1)[:, None], torch.cat((sin, sin), -1)[:, None]

    def hf(x):
        x = x.view(3, -1, 64)
        x1, x2 = x.chunk(2, dim=-1)
        return (x * cos + torch.cat((-x2, x1), dim=-1) * sin).view(3, -1)

    for _ in range(2):  # the second call reuses the step's tables
        q, k = ops.rotary_embedding(positions, query, key, 64, cache)
        assert torch.equal(q, hf(query)) and torch.equal(k, hf(key))
    moved = positions + 1  # new positions: new tables
    q, _ = ops.rotary_embedding(moved, query, key, 64, cache)
    expected = _naive_rotary(moved, query, 64, cache.double(), True)
    torch.testing.assert_close(q.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_tokens", [1, 5])
@pytest.mark.parametrize("neox", [True, False])
def test_rotary_of_q_and_k_split_from_one_projection(num_tokens, neox):
    """q and k as adjacent column slices of qkv take one joined pass: the same bits as two
    separate passes, and qkv itself is left unchanged."""
    gen = torch.Generator().manual_seed(num_tokens)
    cache = _cos_sin_cache(64, 64).float()
    positions = torch.randint(0, 64, (num_tokens,), generator=gen)
    qkv = torch.randn(num_tokens, (9 + 3 + 3) * 64, generator=gen)
    before = qkv.clone()
    q, k, _ = qkv.split([9 * 64, 3 * 64, 3 * 64], dim=-1)
    assert reference._adjacent_columns(q, k) is not None  # the joined path is the one tested
    assert reference._adjacent_columns(q.clone(), k.clone()) is None
    joined_q, joined_k = ops.rotary_embedding(positions, q, k, 64, cache, neox)
    separate_q, separate_k = ops.rotary_embedding(positions, q.clone(), k.clone(), 64, cache, neox)
    assert torch.equal(qkv, before)
    assert joined_q.shape == q.shape and joined_k.shape == k.shape
    assert torch.equal(joined_q, separate_q) and torch.equal(joined_k, separate_k)
    expected = _naive_rotary(positions, k, 64, cache.double(), neox)
    torch.testing.assert_close(joined_k.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head_size,rot_dim", [(64, 64), (128, 128), (64, 32)])
@pytest.mark.parametrize("neox", [True, False])
def test_rotary_embedding(head_size, rot_dim, neox):
    gen = torch.Generator().manual_seed(3)
    positions = torch.tensor([0, 1, 5, 99, 3], dtype=torch.int64)
    query = torch.randn(5, 4 * head_size, generator=gen)
    key = torch.randn(5, 2 * head_size, generator=gen)
    cache = _cos_sin_cache(128, rot_dim)
    q_before, k_before = query.clone(), key.clone()
    q_out, k_out = ops.rotary_embedding(positions, query, key, head_size, cache.float(), is_neox_style=neox)
    torch.testing.assert_close(q_out.double(), _naive_rotary(positions, query, head_size, cache, neox), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_out.double(), _naive_rotary(positions, key, head_size, cache, neox), atol=1e-5, rtol=1e-5)
    assert torch.equal(query, q_before) and torch.equal(key, k_before)


# --------------------------------------------------------------------------- SiLU and mul


@pytest.mark.parametrize("intermediate", [1, 64, 1536])
def test_silu_and_mul(intermediate):
    x = torch.randn(3, 2 * intermediate, generator=torch.Generator().manual_seed(4))
    gate, up = x[:, :intermediate].double(), x[:, intermediate:].double()
    expected = gate / (1 + torch.exp(-gate)) * up
    torch.testing.assert_close(ops.silu_and_mul(x).double(), expected, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- argmax (greedy sampling)


def test_argmax_is_torchs():
    """The first largest value of each row, NaN counting as the largest, for a vocabulary that is
    not a multiple of 16, ties, infinities and rows with a stride wider than the row."""
    gen = torch.Generator().manual_seed(6)
    wide = torch.randn(9, 49160, generator=gen)
    x = wide[:, :49155]  # row stride 49160
    x[1, 7] = x[1, 40000] = x[1].max() + 1  # a tie: the first wins
    x[2, 100], x[2, 30000] = float("nan"), float("nan")
    x[3] = float("-inf")
    x[4, 49154] = float("inf")
    x[5, 3], x[5, 49150] = float("inf"), float("nan")
    x[6] = 0.0
    x[7, 49150:] = 1e30  # the maximum in the scalar tail, tied
    assert torch.equal(ops.argmax(x), x.argmax(dim=-1))
    assert ops.argmax(x).tolist()[:6] == [x[0].argmax().item(), 7, 100, 0, 49154, 49150]
    one = torch.randn(4, 1, generator=gen)
    assert torch.equal(ops.argmax(one), torch.zeros(4, dtype=torch.int64))
    assert ops.argmax(torch.empty(0, 5)).shape == (0,)


# --------------------------------------------------------------------------- dispatch


def test_float32_cpu_calls_run_the_c_kernels(backend, monkeypatch):
    """Under auto, every op with a C kernel runs it on float32 CPU tensors (the native runs
    above would otherwise be testing the reference twice)."""
    if backend != "native":
        pytest.skip("checks the native dispatch")

    def refuse(*args, **kwargs):
        raise AssertionError("the reference ran where the C kernel should have")

    for name in ("rms_norm", "silu_and_mul", "rotary_embedding", "store_kv_cache", "paged_attention"):
        monkeypatch.setattr(reference, name, refuse)
    monkeypatch.setattr(torch.Tensor, "argmax", refuse)
    ops.argmax(torch.randn(3, 40))
    monkeypatch.undo()
    for name in ("rms_norm", "silu_and_mul", "rotary_embedding", "store_kv_cache", "paged_attention"):
        monkeypatch.setattr(reference, name, refuse)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 64, generator=gen)
    ops.rms_norm(x, torch.ones(64), 1e-5)
    ops.rms_norm(x, torch.ones(64), 1e-5, torch.randn(3, 64, generator=gen))
    ops.silu_and_mul(torch.randn(3, 128, generator=gen))
    cache = torch.randn(32, 16, generator=gen)
    q, k = ops.rotary_embedding(torch.tensor([0, 5, 9]), torch.randn(3, 4 * 16, generator=gen),
                                torch.randn(3, 2 * 16, generator=gen), 16, cache)
    kv_cache = torch.zeros(2, 4, 4, 2, 16)
    ops.store_kv_cache(k.view(3, 2, 16), k.view(3, 2, 16), kv_cache, torch.tensor([0, 4, 8]))
    seq_lens = torch.tensor([1, 1, 1], dtype=torch.int32)
    ops.paged_attention(q.view(3, 4, 16), kv_cache, torch.tensor([0, 1, 2, 3], dtype=torch.int32), seq_lens,
                        torch.tensor([[0], [1], [2]], dtype=torch.int32), 0.25, 1, 1, [0, 1, 2, 3], [1, 1, 1])
