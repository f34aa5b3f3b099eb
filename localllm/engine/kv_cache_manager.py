"""The scheduler's only window onto KV blocks (vLLM v1's KVCacheManager).

- get_computed_blocks(request): the longest cached prefix of the prompt, in whole blocks.
- allocate_slots(request, num_new_tokens, ...): blocks for the next tokens, or None when the
  pool cannot supply them (the scheduler then preempts or waits). Nothing changes on None.
- free(request): give the request's blocks back (they stay cached until evicted).
"""

from __future__ import annotations

from localllm.engine.block_pool import BlockPool, KVCacheBlock, hash_block_tokens
from localllm.engine.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        # Chained hashes of the request's full blocks, computed once per block and kept across
        # preemption (the tokens do not change).
        self.req_to_block_hashes: dict[str, list[int]] = {}
        # How many of the request's first blocks are cached (hashed) already.
        self.req_num_cached_blocks: dict[str, int] = {}
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def num_total_blocks(self) -> int:
        return self.pool.num_blocks

    def usage(self) -> float:
        return self.pool.usage()

    def _block_hashes(self, request: Request, num_tokens: int) -> list[int]:
        """Hashes of the full blocks among the request's first num_tokens tokens.

        NOTE: only blocks whose every token is known on the host are hashed. With async
        scheduling a step may fill a block with a token still being sampled; that block is
        hashed (and cached) by a later call, once the token is appended."""
        hashes = self.req_to_block_hashes.setdefault(request.request_id, [])
        bs = self.block_size
        tokens = request.all_token_ids
        for i in range(len(hashes), min(num_tokens, len(tokens)) // bs):
            parent = hashes[-1] if hashes else None
            hashes.append(hash_block_tokens(parent, tokens[i * bs : (i + 1) * bs]))
        return hashes

    def get_computed_blocks(self, request: Request) -> tuple[list[KVCacheBlock], int]:
        """Cached blocks covering a prefix of the request's tokens, and how many tokens they hold.

        NOTE: at least one token is always left to compute, so the step that schedules the
        request produces logits to sample from.
        """
        if not self.enable_caching or request.sampling_params.prompt_logprobs is not None:
            return [], 0
        max_hit_tokens = request.num_tokens - 1
        hashes = self._block_hashes(request, max_hit_tokens)
        blocks: list[KVCacheBlock] = []
        for block_hash in hashes:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            blocks.append(block)
        self.prefix_cache_queries += request.num_tokens
        self.prefix_cache_hits += len(blocks) * self.block_size
        return blocks, len(blocks) * self.block_size

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: list[KVCacheBlock] | None = None,
    ) -> list[KVCacheBlock] | None:
        """Make room for num_new_tokens after the request's computed tokens (and after
        new_computed_blocks, prefix-cache hits being taken for it now). Returns the newly
        allocated blocks, or None with no change when the pool is short."""
        if num_new_tokens < 1:
            raise ValueError("num_new_tokens must be >= 1")
        new_computed_blocks = new_computed_blocks or []
        blocks = self.req_to_blocks.get(request.request_id, [])
        num_computed = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        num_required = cdiv(num_computed + num_new_tokens, self.block_size)
        num_new_blocks = num_required - len(blocks) - len(new_computed_blocks)
        # Cache hits sitting in the free queue are revived, not allocated, but they stop
        # being available to others.
        num_revived = sum(1 for b in new_computed_blocks if b.ref_cnt == 0)
        if num_new_blocks > self.pool.num_free_blocks - num_revived:
            return None
        self.pool.touch(new_computed_blocks)
        new_blocks = self.pool.get_new_blocks(max(num_new_blocks, 0))
        self.req_to_blocks[request.request_id] = blocks + new_computed_blocks + new_blocks
        # NOTE: blocks filled by this step are cached now; a request scheduled later in the same
        # step may share them because every layer writes the step's KV before any attention
        # reads it.
        self.cache_full_blocks(request, num_computed + num_new_tokens)
        return new_blocks

    def cache_full_blocks(self, request: Request, num_tokens: int) -> None:
        """Cache the request's blocks full of its first num_tokens tokens (computed, or being
        computed by a step already launched), those not cached yet. A block holding a token
        not yet known on the host (async scheduling) waits for a later call: the scheduler
        calls this again when it appends that token."""
        if not self.enable_caching:
            return
        blocks = self.req_to_blocks.get(request.request_id, [])
        done = self.req_num_cached_blocks.get(request.request_id, 0)
        num_full = min(num_tokens // self.block_size, len(blocks))
        if num_full <= done:
            return
        hashes = self._block_hashes(request, num_full * self.block_size)
        num_cached = min(num_full, len(hashes))
        for i in range(done, num_cached):
            self.pool.cache_block(blocks[i], hashes[i])
        self.req_num_cached_blocks[request.request_id] = num_cached

    def get_block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self.req_to_blocks.get(request_id, [])]

    def free(self, request: Request) -> None:
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.req_num_cached_blocks.pop(request.request_id, None)
        self.pool.free_blocks(reversed(blocks))

    def forget(self, request: Request) -> None:
        """Drop everything about a finished request (its blocks must be freed already)."""
        self.req_to_blocks.pop(request.request_id, None)
        self.req_to_block_hashes.pop(request.request_id, None)

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset_prefix_cache()
