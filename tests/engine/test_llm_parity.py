"""Greedy parity with transformers `generate` on the same weights, through the whole engine:
SmolLM2-135M (the GGUF) and tiny random-weight Llama, Qwen2 and Qwen3 checkpoints.

Token ids must match exactly, except from a first divergence where the reference's top-2
logits are within rounding of each other (HFReference.check). Every scenario (one prompt, a
mixed batch, chunked prefill, preemption, prefix-cache hits) must give the transformers answer,
and a prompt's greedy answer must not depend on what else is in its batch.
"""

from __future__ import annotations

import pytest
import torch

from localllm import SamplingParams
from tests.engine.conftest import TINY_ARCHS, StepRecorder, scheduler_limits

SMOL_MAX_TOKENS = 8
TINY_MAX_TOKENS = 20

_SHARED = (
    "The following is a conversation between a curious student and a patient teacher about the "
    "history of science, the scientific method, and how great discoveries were made. Student:"
)
_SMOL_TEXTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a land far away, there lived a",
    "1, 2, 3, 4, 5,",
    "The three primary colors are",
    "Water boils at a temperature of",
    "A haiku about autumn leaves:\n",
    "Translate to French: I love reading books in the garden on sunny afternoons.",
    "List of planets in the solar system: Mercury, Venus,",
    "The quick brown fox",
    _SHARED + " Who discovered penicillin?",
    _SHARED + " Why is the sky blue?",
    _SHARED + " What did Galileo observe with his telescope when he looked at Jupiter?",
]


def smol_prompts(tokenizer) -> list:
    """16 prompts: strings of mixed lengths (three share a 30+-token prefix) and 1- and 2-token
    prompts given as ids."""
    one = tokenizer.encode("Hello", add_special_tokens=False)[:1]
    two = tokenizer.encode("Hi there", add_special_tokens=False)[:2]
    return [*_SMOL_TEXTS[:5], {"prompt_token_ids": one}, *_SMOL_TEXTS[5:10], {"prompt_token_ids": two},
            *_SMOL_TEXTS[10:], {"prompt_token_ids": [1]}]


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens)


def check_outputs(reference, outputs, max_tokens: int) -> dict:
    verdicts = [reference.check(o.prompt_token_ids, o.outputs[0].token_ids, max_tokens) for o in outputs]
    for o in outputs:
        assert o.finished and o.outputs[0].finish_reason in ("stop", "length")
    return {v: verdicts.count(v) for v in set(verdicts)}


def token_ids(outputs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outputs]


# ---------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smol_reference(smollm2_llm, smollm2_reference):
    """The transformers answers for every SmolLM2 prompt here, from one batched generate."""
    prompts = smol_prompts(smollm2_llm.get_tokenizer())
    smollm2_reference.prefetch([smollm2_llm.engine.tokenize(p)[1] for p in prompts], SMOL_MAX_TOKENS)
    return smollm2_reference


@pytest.fixture(scope="module")
def smol_batch(smollm2_llm):
    """The 16 prompts generated together on a cold cache (no prefix caching): (prompts, outputs,
    steps)."""
    prompts = smol_prompts(smollm2_llm.get_tokenizer())
    assert len(prompts) >= 16
    with scheduler_limits(smollm2_llm, enable_prefix_caching=False) as engine:
        recorder = StepRecorder(engine)
        outputs = smollm2_llm.generate(prompts, greedy(SMOL_MAX_TOKENS))
    return prompts, outputs, recorder


def test_smollm2_single_prompt(smollm2_llm, smol_reference):
    outputs = smollm2_llm.generate("The capital of France is", greedy(SMOL_MAX_TOKENS))
    assert check_outputs(smol_reference, outputs, SMOL_MAX_TOKENS) == {"exact": 1}
    assert "Paris" in outputs[0].outputs[0].text


def test_smollm2_batch_of_mixed_lengths(smol_batch, smol_reference):
    prompts, outputs, recorder = smol_batch
    lengths = sorted(len(o.prompt_token_ids) for o in outputs)
    assert lengths[0] == 1 and any(n > 16 and n % 16 for n in lengths), lengths
    assert recorder.max_batch_size == len(prompts)  # all decoded together
    verdicts = check_outputs(smol_reference, outputs, SMOL_MAX_TOKENS)
    assert verdicts.get("exact", 0) >= len(prompts) - 2, verdicts


def test_smollm2_batch_composition_does_not_change_answers(smollm2_llm, smol_batch):
    prompts, batch_outputs, _ = smol_batch
    with scheduler_limits(smollm2_llm, enable_prefix_caching=False):
        for i in (0, 5, 12, 15):  # a text, a 1-token id prompt, a long shared-prefix text, [1]
            alone = smollm2_llm.generate(prompts[i], greedy(SMOL_MAX_TOKENS))
            assert token_ids(alone) == token_ids(batch_outputs[i : i + 1]), prompts[i]
        # A different batch: the prompts reversed, half of them.
        subset = prompts[::-2]
        others = smollm2_llm.generate(subset, greedy(SMOL_MAX_TOKENS))
    assert token_ids(others) == token_ids(batch_outputs[::-2])


def test_smollm2_chunked_prefill(smollm2_llm, smol_batch, smol_reference):
    prompts, batch_outputs, _ = smol_batch
    with scheduler_limits(smollm2_llm, max_num_batched_tokens=16, enable_prefix_caching=False) as engine:
        recorder = StepRecorder(engine)
        outputs = smollm2_llm.generate(prompts, greedy(SMOL_MAX_TOKENS))
    assert recorder.max_tokens_per_step <= 16
    # Some prompt was prefilled in several chunks (a later chunk starts past position 0).
    prompt_len = {o.request_id: len(o.prompt_token_ids) for o in outputs}
    assert any(0 < start < prompt_len[rid] for step in recorder.steps for rid, _, start in step)
    verdicts = check_outputs(smol_reference, outputs, SMOL_MAX_TOKENS)
    assert verdicts.get("exact", 0) >= len(prompts) - 2, verdicts


def test_smollm2_preemption(smollm2_llm, smol_batch, smol_reference):
    prompts, batch_outputs, _ = smol_batch
    with scheduler_limits(smollm2_llm, kv_cache_blocks=12) as engine:
        outputs = smollm2_llm.generate(prompts, greedy(SMOL_MAX_TOKENS))
        assert engine.scheduler.num_preemptions > 0
    verdicts = check_outputs(smol_reference, outputs, SMOL_MAX_TOKENS)
    assert verdicts.get("exact", 0) >= len(prompts) - 2, verdicts


def test_smollm2_prefix_cache_hits(smollm2_llm, smol_batch, smol_reference):
    prompts, _, _ = smol_batch
    first = [i for i, p in enumerate(prompts) if isinstance(p, str) and p.startswith(_SHARED)][0]
    with scheduler_limits(smollm2_llm, enable_prefix_caching=True) as engine:
        outputs = smollm2_llm.generate(prompts[first], greedy(SMOL_MAX_TOKENS))
        assert outputs[0].num_cached_tokens == 0
        # The other shared-prefix prompts hit the first one's blocks.
        outputs += smollm2_llm.generate(prompts[:first] + prompts[first + 1 :], greedy(SMOL_MAX_TOKENS))
        hits = [o.num_cached_tokens for o in outputs if (o.prompt or "").startswith(_SHARED)]
        assert hits[0] == 0 and all(h >= 32 for h in hits[1:]), hits
        # A rerun is served from the cache: every full block, leaving at least one token to compute.
        rerun = smollm2_llm.generate(prompts, greedy(SMOL_MAX_TOKENS))
        assert [o.num_cached_tokens for o in rerun] == [(len(o.prompt_token_ids) - 1) // 16 * 16 for o in rerun]
        assert engine.scheduler.kv_cache_manager.prefix_cache_hits > 0
    check_outputs(smol_reference, outputs, SMOL_MAX_TOKENS)
    verdicts = check_outputs(smol_reference, rerun, SMOL_MAX_TOKENS)
    assert verdicts.get("exact", 0) >= len(prompts) - 2, verdicts


# ---------------------------------------------------------------- tiny random-weight models

_TINY_LENGTHS = [1, 1, 2, 3, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 40, 47, 63, 64, 65, 100]


def tiny_prompts(seed: int = 0) -> list[dict]:
    """20 prompts of mixed lengths plus 4 that share a 40-token prefix."""
    gen = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(3, 256, (n,), generator=gen).tolist()

    prompts = [ids(n) for n in _TINY_LENGTHS]
    prefix = ids(40)
    prompts += [prefix + ids(n) for n in (1, 5, 16, 30)]
    return [{"prompt_token_ids": p} for p in prompts]


@pytest.fixture(params=TINY_ARCHS)
def tiny(request, tiny_models):
    path, reference = tiny_models[request.param]
    return path, reference


def test_tiny_single_prompt(tiny, make_llm):
    path, reference = tiny
    llm = make_llm(path)
    prompt = tiny_prompts()[13]
    outputs = llm.generate(prompt, greedy(TINY_MAX_TOKENS))
    assert check_outputs(reference, outputs, TINY_MAX_TOKENS) == {"exact": 1}


def test_tiny_batch_and_composition(tiny, make_llm):
    path, reference = tiny
    llm = make_llm(path, enable_prefix_caching=False)
    prompts = tiny_prompts()
    recorder = StepRecorder(llm.engine)
    outputs = llm.generate(prompts, greedy(TINY_MAX_TOKENS))
    assert recorder.max_batch_size == len(prompts)
    assert check_outputs(reference, outputs, TINY_MAX_TOKENS) == {"exact": len(prompts)}
    for i, prompt in enumerate(prompts):
        assert token_ids(llm.generate(prompt, greedy(TINY_MAX_TOKENS))) == token_ids(outputs[i : i + 1])


def test_tiny_chunked_prefill(tiny, make_llm):
    path, reference = tiny
    llm = make_llm(path, max_num_batched_tokens=16, enable_prefix_caching=False)
    prompts = tiny_prompts()
    recorder = StepRecorder(llm.engine)
    outputs = llm.generate(prompts, greedy(TINY_MAX_TOKENS))
    assert recorder.max_tokens_per_step <= 16
    assert any(0 < start < 100 and rid == outputs[19].request_id for step in recorder.steps for rid, _, start in step)
    assert check_outputs(reference, outputs, TINY_MAX_TOKENS) == {"exact": len(prompts)}


@pytest.mark.parametrize("block_size", [8, 16])
def test_tiny_preemption(tiny, make_llm, block_size):
    path, reference = tiny
    # 160 token slots: the longest request (100 + 20) fits, the whole batch does not.
    llm = make_llm(path, block_size=block_size, kv_cache_blocks=160 // block_size)
    prompts = tiny_prompts()
    outputs = llm.generate(prompts, greedy(TINY_MAX_TOKENS))
    assert llm.engine.scheduler.num_preemptions > 0
    assert check_outputs(reference, outputs, TINY_MAX_TOKENS) == {"exact": len(prompts)}


def test_tiny_prefix_cache_hits(tiny, make_llm):
    path, reference = tiny
    llm = make_llm(path, enable_prefix_caching=True)
    prompts = tiny_prompts()
    # The four shared-prefix prompts arrive together: the later ones share blocks that the
    # first computes in the same step.
    together = llm.generate(prompts[-4:], greedy(TINY_MAX_TOKENS))
    assert [o.num_cached_tokens for o in together][1:] == [32, 32, 32]
    rerun = llm.generate(prompts, greedy(TINY_MAX_TOKENS))
    assert sum(o.num_cached_tokens > 0 for o in rerun) >= 4
    assert llm.engine.scheduler.kv_cache_manager.prefix_cache_hits > 0
    assert check_outputs(reference, together + rerun, TINY_MAX_TOKENS) == {"exact": 4 + len(prompts)}


def test_reference_check_accepts_only_rounding_ties():
    from tests.engine.conftest import HFReference

    reference = HFReference(model=None, tie_tolerance=1e-4)
    logits = [
        torch.tensor([0.0, 5.0, 1.0, 0.0]),
        torch.tensor([0.0, 2.0, 2.00005, 0.0]),  # a rounding tie between tokens 2 and 1
        torch.tensor([3.0, 0.0, 0.0, 0.0]),
    ]
    reference._cache[((7, 8), 3)] = ([1, 2, 0], logits)
    assert reference.check([7, 8], [1, 2, 0], 3) == "exact"
    assert reference.check([7, 8], [1, 1, 3], 3) == "near-tie"  # diverges at the tie, then anything
    with pytest.raises(AssertionError, match="top-2 gap"):
        reference.check([7, 8], [2, 2, 0], 3)  # diverges where the reference is sure
    with pytest.raises(AssertionError, match="top-2 gap"):
        reference.check([7, 8], [1, 3, 0], 3)  # not one of the tied two
    with pytest.raises(AssertionError, match="stopped early"):
        reference.check([7, 8], [1, 2], 3)
