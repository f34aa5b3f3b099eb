"""Triton paged attention (decode and prefill kernels) against kernels.reference.paged_attention.

Fresh random inputs per case; every cache slot not holding a sequence's token is NaN, padding
block-table entries point at NaN blocks or at other sequences' blocks, and the output is poisoned
with NaN first, so a read past seq_len, an unmasked padding block or a missing write shows up.
The reference runs in float64 on the upcast (already rounded) inputs.
Tolerances: float32 1e-4 (the kernels use input_precision="ieee" for float32 dots: no tf32);
bf16/fp16 2e-2 (P is rounded to 16 bits before P @ V and the output is rounded to 16 bits:
relative 2^-8 on values of magnitude <~ 3). Under the interpreter bf16 dot operands are upcast to
float32 (its bf16 tl.dot is broken, see attention_decode.dot_types), so there bf16 cases check the
16-bit loads, stores and masks; on a GPU they check the real bf16 tensor-core path.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.kernels.conftest import KERNEL_DEVICE, REAL_SHAPES, requires_triton

from localllm.kernels import reference
from localllm.kernels.triton import attention_decode, attention_prefill

pytestmark = requires_triton

SMALL_DTYPES = [torch.float32, torch.bfloat16] if REAL_SHAPES else [torch.float32]


def _tol(dtype):
    return dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)


def _make_batch(query_lens, seq_lens, num_heads, num_kv_heads, head_size, block_size, dtype, seed, max_seq_len=None):
    """NaN-poisoned cache holding seq_lens[i] tokens of each sequence in scattered blocks; query is a
    strided view (q of a packed qkv row), as the model passes it."""
    gen = torch.Generator().manual_seed(seed)
    max_seq_len = max_seq_len or max(seq_lens)
    blocks_per_seq = [math.ceil(s / block_size) for s in seq_lens]
    num_nan_blocks = 2
    num_blocks = sum(blocks_per_seq) + num_nan_blocks
    kv_cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_size), float("nan"))
    order = torch.randperm(num_blocks, generator=gen).tolist()
    nan_blocks, order = order[:num_nan_blocks], order[num_nan_blocks:]
    used = order[: sum(blocks_per_seq)]
    max_blocks = math.ceil(max_seq_len / block_size) + 1
    # Padding entries: NaN blocks or blocks of other sequences (finite data that must stay masked).
    pad_choices = torch.tensor(nan_blocks + used, dtype=torch.int32)
    block_table = pad_choices[torch.randint(len(pad_choices), (len(seq_lens), max_blocks), generator=gen)]
    for i, n in enumerate(blocks_per_seq):
        block_table[i, :n] = torch.tensor(order[:n], dtype=torch.int32)
        order = order[n:]
    flat = kv_cache.view(2, num_blocks * block_size, num_kv_heads, head_size)
    positions = [torch.arange(s) for s in seq_lens]
    slots = torch.cat([block_table[i, p // block_size].long() * block_size + p % block_size
                       for i, p in enumerate(positions)])
    flat[:, slots] = torch.randn(2, len(slots), num_kv_heads, head_size, generator=gen)
    num_tokens = sum(query_lens)
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_size, generator=gen)
    starts = [0]
    for q in query_lens:
        starts.append(starts[-1] + q)
    dev = KERNEL_DEVICE
    qkv, kv_cache = qkv.to(dev, dtype), kv_cache.to(dev, dtype)
    query = qkv[:, : num_heads * head_size].view(num_tokens, num_heads, head_size)
    meta = dict(
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=dev),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
        block_table=block_table.to(dev),
    )
    return query, kv_cache, meta, starts


def _expected(query, kv_cache, meta, starts, seq_lens, scale):
    """Reference in float64 (on the kernel's device); rows of padding sequences (seq_len 0) expect zeros."""
    live = [i for i, s in enumerate(seq_lens) if s > 0]
    expected = torch.zeros(query.shape, dtype=torch.float64, device=query.device)
    rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in live]).to(query.device)
    q_lens = [starts[i + 1] - starts[i] for i in live]
    sub_starts = [0]
    for q in q_lens:
        sub_starts.append(sub_starts[-1] + q)
    live_seq_lens = [seq_lens[i] for i in live]
    expected[rows] = reference.paged_attention(
        query.double()[rows], kv_cache.double(),
        torch.tensor(sub_starts, dtype=torch.int32, device=query.device),
        torch.tensor(live_seq_lens, dtype=torch.int32, device=query.device),
        meta["block_table"][live], scale, max(q_lens), max(live_seq_lens), sub_starts, live_seq_lens,
    )
    return expected.cpu()


def _poisoned(query):
    return torch.full(query.shape, float("nan"), dtype=query.dtype, device=query.device)


def _check(out, poisoned, query, expected):
    assert out is poisoned and out.dtype == query.dtype
    assert not out.isnan().any(), f"{int(out.isnan().any(-1).sum())} (token, head) rows unwritten or NaN"
    torch.testing.assert_close(out.cpu().double(), expected, **_tol(query.dtype))


# --------------------------------------------------------------------------- decode


def _run_decode(seq_lens, num_kv_heads, group, head_size, block_size, dtype, seed, max_seq_len=None, **kw):
    query, kv_cache, meta, starts = _make_batch(
        [1] * len(seq_lens), seq_lens, num_kv_heads * group, num_kv_heads, head_size, block_size, dtype, seed,
        max_seq_len)
    scale = head_size**-0.5
    out = _poisoned(query)
    result = attention_decode.paged_attention_decode(
        query, kv_cache, meta["seq_lens"], meta["block_table"], scale, max_seq_len or max(seq_lens), out=out, **kw)
    _check(result, out, query, _expected(query, kv_cache, meta, starts, seq_lens, scale))


# Padding rows (0) in the middle and at the end; lengths 1, block multiples and not.
DECODE_SEQ_LENS = [1, 17, 40, 0, 16, 100, 33, 0]
# forced: partitions of 48 tokens (3 splits of ceil(120 / 3) rounded up to BLOCK_N 16): the
# 100-token context crosses two boundaries, short contexts leave partitions 1 and 2 empty.
DECODE_SPLITS = {"auto": {}, "forced": dict(num_splits=3, block_n=16)}


@pytest.mark.parametrize("splits", sorted(DECODE_SPLITS))
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_kv_heads,group", [(2, 1), (1, 4), (2, 8)])
@pytest.mark.parametrize("head_size", [64, 128])
@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=str)
def test_decode(dtype, head_size, num_kv_heads, group, block_size, splits):
    seed = head_size + 7 * group + block_size + len(splits)
    _run_decode(DECODE_SEQ_LENS, num_kv_heads, group, head_size, block_size, dtype, seed,
                max_seq_len=120, **DECODE_SPLITS[splits])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("block_size,group,num_splits,block_n", [
    (64, 4, 2, 16),  # block larger than a tile
    (16, 3, 7, 16),  # non power-of-two group; 7 splits of 16: several cross block boundaries
    (16, 2, 5, 64),  # partition rounding leaves the last splits empty for every sequence
    (32, 8, 1, None),
])
def test_decode_configs(dtype, block_size, group, num_splits, block_n):
    _run_decode([70, 3, 0, 96, 49], 2, group, 64, block_size, dtype, seed=block_size + group + num_splits,
                num_splits=num_splits, block_n=block_n)


def test_choose_num_splits():
    # Long contexts and few programs: split up to ~2 programs per SM, partitions a multiple of BLOCK_N.
    splits, part = attention_decode.choose_num_splits(1, 8, 32768, num_sms=132, block_n=64)
    assert splits > 8 and part % 64 == 0 and splits * part >= 32768 and (splits - 1) * part < 32768
    # Short contexts are never split below MIN_TILES_PER_SPLIT tiles.
    assert attention_decode.choose_num_splits(1, 8, 100, num_sms=132, block_n=64) == (1, 128)
    # Enough programs already: no split.
    assert attention_decode.choose_num_splits(256, 8, 4096, num_sms=132, block_n=64)[0] == 1


# --------------------------------------------------------------------------- prefill


PREFILL_CASES = {
    # name: (query_lens, seq_lens)
    "prefill": ([5, 1, 33], [5, 1, 33]),
    "chunked": ([7, 16, 3, 70], [40, 48, 19, 100]),  # cached context before each chunk
    "mixed": ([1, 9, 1, 1, 4], [30, 9, 1, 65, 70]),  # decode rows among chunks
}


def _run_prefill(query_lens, seq_lens, num_kv_heads, group, head_size, block_size, dtype, seed, **kw):
    query, kv_cache, meta, starts = _make_batch(
        query_lens, seq_lens, num_kv_heads * group, num_kv_heads, head_size, block_size, dtype, seed)
    scale = head_size**-0.5
    out = _poisoned(query)
    result = attention_prefill.paged_attention_prefill(
        query, kv_cache, meta["query_start_loc"], meta["seq_lens"], meta["block_table"], scale,
        max(query_lens), max(seq_lens), out=out, **kw)
    _check(result, out, query, _expected(query, kv_cache, meta, starts, seq_lens, scale))


@pytest.mark.parametrize("case", sorted(PREFILL_CASES))
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("num_kv_heads,group", [(2, 1), (1, 4), (2, 8)])
@pytest.mark.parametrize("head_size", [64, 128])
@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=str)
def test_prefill(dtype, head_size, num_kv_heads, group, block_size, case):
    query_lens, seq_lens = PREFILL_CASES[case]
    _run_prefill(query_lens, seq_lens, num_kv_heads, group, head_size, block_size, dtype,
                 seed=len(case) * 131 + head_size + 7 * group + block_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", sorted(PREFILL_CASES))
@pytest.mark.parametrize("group,block_m,block_n,block_n_diag,block_size", [
    (1, 16, 16, None, 32),  # many q tiles per sequence: binary search, tiles past a sequence exit
    (4, 32, 32, None, 16),  # BLOCK_Q 8 < BLOCK_N: several diagonal tiles
    (3, 64, 16, None, 64),  # non power-of-two group: padding rows in every tile
    (2, None, None, None, 16),  # default tiles
    (4, 32, 64, 16, 16),  # diagonal tiles of 16 keys after tiles of 64: unmasked ones between
    (1, 32, 64, 32, 32),  # BLOCK_Q 32 = the diagonal tile
    (2, 64, 32, 16, 16),  # BLOCK_Q 32 > the diagonal tile: several masked ones
])
def test_prefill_tiles(dtype, case, group, block_m, block_n, block_n_diag, block_size):
    query_lens, seq_lens = PREFILL_CASES[case]
    _run_prefill(query_lens, seq_lens, 2, group, 64, block_size, dtype, seed=group + len(case),
                 block_m=block_m, block_n=block_n, block_n_diag=block_n_diag)


@pytest.mark.parametrize("block_n_diag", [8, 24, 128])
def test_prefill_rejects_bad_diagonal_tile(block_n_diag):
    query, kv_cache, meta, _ = _make_batch([3], [3], 2, 2, 64, 16, torch.float32, seed=0)
    with pytest.raises(ValueError, match="block_n_diag"):
        attention_prefill.paged_attention_prefill(query, kv_cache, meta["query_start_loc"], meta["seq_lens"],
                                                  meta["block_table"], 0.125, 3, 3, block_n=64,
                                                  block_n_diag=block_n_diag)


def test_prefill_int64_offsets(monkeypatch):
    """The 64-bit slot-offset path (caches of >= 2**31 elements) on a small cache."""
    monkeypatch.setattr(attention_prefill, "_INT32_OFFSETS_BELOW", 0)
    query_lens, seq_lens = PREFILL_CASES["chunked"]
    _run_prefill(query_lens, seq_lens, 2, 4, 128, 16, SMALL_DTYPES[-1], seed=11)


# --------------------------------------------------------------------------- real shapes (GPU)

real_shapes = pytest.mark.skipif(not REAL_SHAPES, reason="real shapes run on a GPU only")


@real_shapes
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_decode_real(dtype):
    gen = torch.Generator().manual_seed(5)
    seq_lens = torch.randint(1, 4097, (64,), generator=gen).tolist()
    seq_lens[:3] = [4096, 1, 0]
    _run_decode(seq_lens, 8, 4, 128, 16, dtype, seed=6, max_seq_len=4096)


@real_shapes
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("query_lens,seq_lens", [
    ([512], [2048]),  # a chunk on a cached context
    ([4096], [4096]),
    ([1] * 30 + [512, 300], [1000 + 37 * i for i in range(30)] + [2048, 300]),  # mixed batch
], ids=["chunk", "prefill", "mixed"])
def test_prefill_real(dtype, query_lens, seq_lens):
    _run_prefill(query_lens, seq_lens, 8, 4, 128, 16, dtype, seed=len(query_lens))


@real_shapes
def test_decode_cuda_graph():
    """Captured once with max_seq_len = the bound, replayed on other lengths: no host reads."""
    seq_lens = [300, 1, 0, 77]
    query, kv_cache, meta, starts = _make_batch([1] * 4, seq_lens, 8, 2, 128, 16, torch.bfloat16, 7, 512)
    out = _poisoned(query)
    call = lambda: attention_decode.paged_attention_decode(  # noqa: E731
        query, kv_cache, meta["seq_lens"], meta["block_table"], 0.1, 512, out=out)
    call()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    for new_lens in ([300, 1, 0, 77], [12, 0, 0, 60]):  # within what the cache holds
        meta["seq_lens"].copy_(torch.tensor(new_lens, dtype=torch.int32))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        _check(out, out, query, _expected(query, kv_cache, meta, starts, new_lens, 0.1))
