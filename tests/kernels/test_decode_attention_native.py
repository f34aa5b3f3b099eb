"""The C decode attention kernel is batch- and thread-count-invariant: a sequence's output bits do
not depend on the other sequences in its batch nor on how many threads run it."""

from __future__ import annotations

import pytest
import torch

from localllm.kernels import cpu_native


@pytest.fixture(autouse=True)
def native():
    if cpu_native.library() is None:
        pytest.skip("the C CPU kernels could not be built on this machine")


def _batch(seq_lens, num_heads, num_kv_heads, head_size, block_size, seed, kv_dtype=torch.float32):
    """Random cache (kv_dtype) whose blocks are handed out in shuffled order; query [S, Hq, D]."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 2
    kv_cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_size, generator=gen).to(kv_dtype)
    order = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    block_table = torch.zeros(len(seq_lens), max(blocks_per_seq) + 1, dtype=torch.int32)
    used = 0
    for i, n in enumerate(blocks_per_seq):
        block_table[i, :n] = order[used:used + n]
        used += n
    query = torch.randn(len(seq_lens), num_heads, head_size, generator=gen)
    return query, kv_cache, block_table


def _attend(query, kv_cache, seq_lens, block_table):
    return cpu_native.decode_attention(query, kv_cache, torch.tensor(seq_lens, dtype=torch.int32), block_table,
                                       query.shape[-1] ** -0.5)


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_size,num_kv_heads,group,block_size", [(64, 3, 3, 16), (128, 2, 4, 16), (80, 1, 5, 32)])
def test_each_sequence_alone_is_bitwise_its_row_in_a_batch(head_size, num_kv_heads, group, block_size, kv_dtype):
    seq_lens = [1, 700, 33, 0, 200, 16, 5, 1000, 64, 17, 2, 129, 48, 31, 300, 9]  # 700, 1000: many blocks
    query, kv_cache, block_table = _batch(seq_lens, num_kv_heads * group, num_kv_heads, head_size, block_size,
                                          seed=head_size, kv_dtype=kv_dtype)
    batched = _attend(query, kv_cache, seq_lens, block_table)
    for i, n in enumerate(seq_lens):
        alone = _attend(query[i:i + 1].clone(), kv_cache, [n], block_table[i:i + 1].clone())
        assert torch.equal(alone[0], batched[i]), f"sequence {i} (length {n})"
    assert torch.equal(batched[3], torch.zeros_like(batched[3]))  # length 0
    # and the batch reversed: position in the batch does not matter either
    flipped = _attend(query.flip(0).contiguous(), kv_cache, seq_lens[::-1], block_table.flip(0).contiguous())
    assert torch.equal(flipped.flip(0), batched)


def test_one_thread_and_two_threads_give_the_same_bits():
    seq_lens = [2048, 1, 200, 48, 513]
    query, kv_cache, block_table = _batch(seq_lens, 9, 3, 64, 16, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _attend(query, kv_cache, seq_lens, block_table)
        torch.set_num_threads(2)
        two = _attend(query, kv_cache, seq_lens, block_table)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_long_shuffled_context_matches_float64():
    seq_lens = [1500, 77]
    query, kv_cache, block_table = _batch(seq_lens, 8, 2, 128, 16, seed=11)
    out = _attend(query, kv_cache, seq_lens, block_table)
    block_size = kv_cache.shape[2]
    for i, n in enumerate(seq_lens):
        slots = [(int(block_table[i, p // block_size]), p % block_size) for p in range(n)]
        keys = torch.stack([kv_cache[0, b, o] for b, o in slots]).double()
        values = torch.stack([kv_cache[1, b, o] for b, o in slots]).double()
        for h in range(8):
            scores = keys[:, h // 4] @ query[i, h].double() * 128 ** -0.5
            expected = torch.softmax(scores, 0) @ values[:, h // 4]
            torch.testing.assert_close(out[i, h].double(), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("head_size,num_kv_heads,group", [(64, 3, 3), (80, 1, 5)])
def test_a_bfloat16_cache_reads_as_its_exact_float32_widening(head_size, num_kv_heads, group):
    """bfloat16 widens to float32 exactly and the arithmetic after it is the float32 kernel's, so a
    bfloat16 cache gives the bits of the float32 cache holding the same values."""
    seq_lens = [1, 300, 33, 16, 80]
    query, kv_cache, block_table = _batch(seq_lens, num_kv_heads * group, num_kv_heads, head_size, 16, seed=21,
                                          kv_dtype=torch.bfloat16)
    assert torch.equal(_attend(query, kv_cache, seq_lens, block_table),
                       _attend(query, kv_cache.float(), seq_lens, block_table))
