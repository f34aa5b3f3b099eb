from localllm.engine.kv_cache_manager import KVCacheManager
from localllm.engine.request import Request
from localllm.sampling_params import SamplingParams


def make(request_id, tokens):
    return Request(request_id, tokens, SamplingParams())


def test_prefix_hit_shares_full_blocks_only():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    a = make("a", list(range(10)))
    assert kv.get_computed_blocks(a) == ([], 0)
    assert len(kv.allocate_slots(a, 10)) == 3
    b = make("b", list(range(8)) + [99, 98, 97])
    blocks, hit = kv.get_computed_blocks(b)
    assert hit == 8 and [x.block_id for x in blocks] == kv.get_block_ids("a")[:2]
    new = kv.allocate_slots(b, 3, blocks)
    assert len(new) == 1 and kv.num_free_blocks == 10 - 4
    assert all(x.ref_cnt == 2 for x in blocks)
    kv.free(a)
    kv.free(b)
    assert kv.num_free_blocks == 10


def test_full_prompt_hit_leaves_one_token_to_compute():
    kv = KVCacheManager(num_blocks=10, block_size=4)
    a = make("a", list(range(8)))
    kv.allocate_slots(a, 8)
    b = make("b", list(range(8)))
    _, hit = kv.get_computed_blocks(b)
    assert hit == 4  # the last block is not reused: its last token must run to give logits
    kv.free(a)


def test_allocate_returns_none_without_changes_when_short():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    a = make("a", list(range(12)))
    assert kv.allocate_slots(a, 12) is None
    assert kv.num_free_blocks == 2 and kv.get_block_ids("a") == []


def test_freed_blocks_stay_cached_until_evicted():
    kv = KVCacheManager(num_blocks=3, block_size=4)
    a = make("a", list(range(9)))
    kv.allocate_slots(a, 9)
    kv.free(a)
    kv.forget(a)
    b = make("b", list(range(9)))
    blocks, hit = kv.get_computed_blocks(b)
    assert hit == 8
    kv.allocate_slots(b, 1, blocks)
    kv.free(b)
    c = make("c", [50 + i for i in range(12)])  # takes every block: evicts the cache
    kv.allocate_slots(c, 12)
    d = make("d", list(range(9)))
    assert kv.get_computed_blocks(d) == ([], 0)
    kv.free(c)
