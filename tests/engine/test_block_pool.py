import pytest

from localllm.engine.block_pool import BlockPool, hash_block_tokens


def test_allocate_and_free_in_lru_order():
    pool = BlockPool(4)
    a = pool.get_new_blocks(2)
    assert pool.num_free_blocks == 2 and all(b.ref_cnt == 1 for b in a)
    pool.free_blocks(reversed(a))
    assert pool.num_free_blocks == 4
    with pytest.raises(ValueError):
        pool.get_new_blocks(5)


def test_cached_free_block_is_revived_not_lost():
    pool = BlockPool(3)
    (block,) = pool.get_new_blocks(1)
    h = hash_block_tokens(None, [1, 2, 3])
    pool.cache_block(block, h)
    pool.free_blocks([block])
    assert pool.get_cached_block(h) is block and pool.num_free_blocks == 3
    pool.touch([block])
    assert block.ref_cnt == 1 and pool.num_free_blocks == 2
    pool.free_blocks([block])


def test_eviction_prefers_unhashed_then_oldest():
    pool = BlockPool(3)
    blocks = pool.get_new_blocks(3)
    pool.cache_block(blocks[0], 11)
    pool.cache_block(blocks[1], 22)
    pool.free_blocks([blocks[0]])
    pool.free_blocks([blocks[1]])
    pool.free_blocks([blocks[2]])  # no hash: goes to the front
    first = pool.get_new_blocks(1)[0]
    assert first is blocks[2]
    second = pool.get_new_blocks(1)[0]
    assert second is blocks[0] and pool.get_cached_block(11) is None
    assert pool.get_cached_block(22) is blocks[1]


def test_double_free_is_an_error():
    pool = BlockPool(2)
    (block,) = pool.get_new_blocks(1)
    pool.free_blocks([block])
    with pytest.raises(RuntimeError):
        pool.free_blocks([block])


def test_chained_hash_depends_on_prefix():
    assert hash_block_tokens(None, [1, 2]) != hash_block_tokens(hash_block_tokens(None, [0]), [1, 2])
