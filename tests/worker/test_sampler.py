"""Sampler: greedy, penalties, filters, seeding, distribution, logprobs, banned tokens.

Every random test runs under a fixed seed, so a pass is deterministic, not lucky."""

from __future__ import annotations

import math

import pytest
import torch

from localllm.outputs import TokenLogprobs
from localllm.sampling_params import SamplingParams
from localllm.worker.sampler import Sampler, apply_penalties, compute_prompt_logprobs
from localllm.worker.sampling_batch import SamplingBatch, seeded_generator


def make_batch(params, *, generators=None, prompts=None, outputs=None, banned=None, device="cpu"):
    n = len(params)
    return SamplingBatch.build(
        params,
        generators if generators is not None else [None] * n,
        prompts if prompts is not None else [[] for _ in range(n)],
        outputs if outputs is not None else [[] for _ in range(n)],
        banned if banned is not None else [[] for _ in range(n)],
        device,
    )


def sample(logits, params, **kw):
    return Sampler()(logits, make_batch(params, **kw))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_greedy_is_argmax_and_leaves_logits_untouched():
    logits = torch.randn(6, 100)
    before = logits.clone()
    out = sample(logits, [SamplingParams(temperature=0.0)] * 6)
    assert out.sampled.dtype == torch.int64
    assert out.sampled.tolist() == logits.argmax(-1).tolist()
    assert torch.equal(logits, before)
    assert out.logprobs == [None] * 6


def test_mixed_batch_greedy_rows_take_argmax():
    logits = torch.randn(8, 50)
    params = [SamplingParams(temperature=0.0 if i % 2 else 1.5, top_k=5 if i % 3 == 0 else 0) for i in range(8)]
    out = sample(logits, params).sampled.tolist()
    argmax = logits.argmax(-1).tolist()
    assert [out[i] for i in range(1, 8, 2)] == [argmax[i] for i in range(1, 8, 2)]


def naive_penalties(logits, params, prompts, outputs):
    out = logits.clone()
    for i, p in enumerate(params):
        for t in set(prompts[i]) | set(outputs[i]):
            x = out[i, t].item()
            out[i, t] = x / p.repetition_penalty if x > 0 else x * p.repetition_penalty
        for t in set(outputs[i]):
            out[i, t] -= p.frequency_penalty * outputs[i].count(t) + p.presence_penalty
    return out


def test_penalties_match_naive_per_row():
    v = 40
    logits = torch.randn(5, v) * 3
    params = [
        SamplingParams(repetition_penalty=1.3),
        SamplingParams(presence_penalty=0.7),
        SamplingParams(frequency_penalty=-0.4),
        SamplingParams(repetition_penalty=0.8, presence_penalty=-1.0, frequency_penalty=1.5),
        SamplingParams(),  # neutral row in a penalized batch
    ]
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, v, (12,), generator=gen).tolist() for _ in params]
    outputs = [torch.randint(0, v, (9,), generator=gen).tolist() for _ in params]
    batch = make_batch(params, prompts=prompts, outputs=outputs)
    assert not batch.no_penalties
    torch.testing.assert_close(apply_penalties(logits, batch), naive_penalties(logits, params, prompts, outputs))
    # ... and greedy sampling sees the penalized logits.
    greedy = [SamplingParams(temperature=0.0, repetition_penalty=p.repetition_penalty,
                             presence_penalty=p.presence_penalty, frequency_penalty=p.frequency_penalty)
              for p in params]
    out = sample(logits, greedy, prompts=prompts, outputs=outputs).sampled
    assert out.tolist() == naive_penalties(logits, params, prompts, outputs).argmax(-1).tolist()


def allowed_set(row_logits, p: SamplingParams) -> set[int]:
    """Naive reference: temperature -> min_p -> top_k -> top_p, in plain Python."""
    probs = torch.softmax(row_logits / p.temperature, -1).tolist()
    ids = [i for i in range(len(probs)) if probs[i] >= p.min_p * max(probs)]
    ids.sort(key=lambda i: -probs[i])
    if p.top_k:
        ids = ids[: p.top_k]
    total = sum(probs[i] for i in ids)
    kept, cum = [], 0.0
    for i in ids:
        kept.append(i)
        cum += probs[i] / total
        if cum >= p.top_p:
            break
    return set(kept)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_k=3),
        SamplingParams(temperature=2.0, top_p=0.5),
        SamplingParams(temperature=1.0, min_p=0.3),
        SamplingParams(temperature=0.8, top_k=6, top_p=0.8, min_p=0.05),
    ],
    ids=["top_k", "top_p", "min_p", "all"],
)
def test_filters_never_sample_outside_allowed_set(params):
    v, rows, steps = 30, 256, 8
    row_logits = torch.randn(v)
    allowed = allowed_set(row_logits, params)
    assert 1 < len(allowed) < v
    seen: set[int] = set()
    for _ in range(steps):
        seen |= set(sample(row_logits.expand(rows, v).clone(), [params] * rows).sampled.tolist())
    assert seen <= allowed
    assert seen == allowed  # ... and everything it allows is reachable (fixed seed: no flake)


def test_filters_per_row_in_one_batch():
    v = 30
    logits = torch.randn(4, v) * 2
    params = [SamplingParams(top_k=2), SamplingParams(top_p=0.3), SamplingParams(min_p=0.5), SamplingParams()]
    batch_logits = logits.repeat(200, 1)
    out = sample(batch_logits, params * 200).sampled.view(200, 4)
    for i, p in enumerate(params[:3]):
        assert set(out[:, i].tolist()) <= allowed_set(logits[i], p)
    assert len(set(out[:, 3].tolist())) > 10  # the unfiltered row roams freely


def test_seeded_row_is_independent_of_batch_composition():
    v, steps = 64, 6
    torch.manual_seed(123)
    logits_steps = [torch.randn(5, v) for _ in range(steps)]
    target = SamplingParams(temperature=1.0, seed=7, top_p=0.9)

    def run(rows: list[int], others: list[SamplingParams]) -> list[int]:
        # The target row always sees logits_steps[s][0]; the rest of the batch varies.
        params = [target, *others]
        gens = [seeded_generator(7, "cpu")] + [
            seeded_generator(p.seed, "cpu") if p.seed is not None else None for p in others
        ]
        tokens = []
        for s in range(steps):
            torch.manual_seed(1000 + s * 17 + len(others))  # the global RNG differs per run
            logits = logits_steps[s][rows]
            tokens.append(Sampler()(logits, make_batch(params, generators=gens)).sampled[0].item())
        return tokens

    alone = run([0], [])
    crowd = run([0, 1, 2, 3, 4], [SamplingParams(temperature=0.0), SamplingParams(seed=3, top_k=4),
                                  SamplingParams(min_p=0.2), SamplingParams(temperature=0.5)])
    pair = run([0, 2], [SamplingParams(seed=99)])
    assert alone == crowd == pair
    # A different seed gives a different stream (not a constant in disguise).
    gens = [seeded_generator(8, "cpu")]
    other = [Sampler()(logits_steps[s][[0]], make_batch([target], generators=gens)).sampled[0].item()
             for s in range(steps)]
    assert other != alone


def chi_square(counts: list[int], probs: list[float]) -> float:
    total = sum(counts)
    return sum((c - total * p) ** 2 / (total * p) for c, p in zip(counts, probs))


# Critical value of chi-square with 7 degrees of freedom at p = 0.001.
_CHI2_7DF_999 = 24.32


def test_temperature_sampling_matches_softmax():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.5, 0.2])
    temperature = 0.7
    probs = torch.softmax(logits / temperature, -1).tolist()
    n = 20000
    out = sample(logits.expand(n, 8).clone(), [SamplingParams(temperature=temperature)] * n).sampled
    counts = torch.bincount(out, minlength=8).tolist()
    assert chi_square(counts, probs) < _CHI2_7DF_999


def test_seeded_generators_sample_the_softmax_too():
    logits = torch.tensor([0.3, -1.0, 1.2, 0.0, 0.8, -0.2, 0.5, 2.0])
    probs = torch.softmax(logits / 1.3, -1).tolist()
    n = 4000
    gens = [seeded_generator(s, "cpu") for s in range(n)]
    out = sample(logits.expand(n, 8).clone(), [SamplingParams(temperature=1.3, seed=1)] * n, generators=gens)
    counts = torch.bincount(out.sampled, minlength=8).tolist()
    assert chi_square(counts, probs) < _CHI2_7DF_999


def naive_token_logprobs(row_logits, chosen: int, k: int) -> TokenLogprobs:
    lp = torch.log_softmax(row_logits.double(), -1).tolist()
    order = sorted(range(len(lp)), key=lambda i: -lp[i])
    rank = 1 + sum(1 for x in lp if x > lp[chosen])
    return TokenLogprobs([chosen] + order[:k], [lp[chosen]] + [lp[i] for i in order[:k]], [rank, *range(1, k + 1)])


def assert_logprobs_equal(got: TokenLogprobs, want: TokenLogprobs):
    assert got.token_ids == want.token_ids
    assert got.ranks == want.ranks
    assert got.logprobs == pytest.approx(want.logprobs, abs=1e-5)


def test_logprobs_are_raw_with_chosen_first():
    v = 50
    logits = torch.randn(4, v) * 2
    top3 = logits[1].topk(3).indices.tolist()
    params = [
        SamplingParams(temperature=0.0, logprobs=5),
        # Banned + penalized: the chosen token is the 4th in the raw distribution, and its
        # logprob is still reported from the raw logits.
        SamplingParams(temperature=0.0, logprobs=2, presence_penalty=0.5),
        SamplingParams(temperature=0.0),  # did not ask
        SamplingParams(temperature=1.0, logprobs=0),  # only the chosen token
    ]
    out = sample(logits, params, banned=[[], top3, [], []], outputs=[[], [top3[0]], [], []])
    sampled = out.sampled.tolist()
    assert sampled[1] == logits[1].topk(4).indices[3].item()
    lps = out.logprobs
    assert lps[2] is None
    assert_logprobs_equal(lps[0], naive_token_logprobs(logits[0], sampled[0], 5))
    assert_logprobs_equal(lps[1], naive_token_logprobs(logits[1], sampled[1], 2))
    assert lps[1].ranks[0] == 4
    assert_logprobs_equal(lps[3], naive_token_logprobs(logits[3], sampled[3], 0))
    assert len(lps[3].token_ids) == 1


def test_prompt_logprobs():
    logits = torch.randn(7, 30)
    next_ids = torch.randint(0, 30, (7,))
    got = compute_prompt_logprobs(logits, next_ids, 3)
    assert Sampler.compute_prompt_logprobs is compute_prompt_logprobs
    for p in range(7):
        assert_logprobs_equal(got[p], naive_token_logprobs(logits[p], next_ids[p].item(), 3))


def test_banned_tokens_never_sampled():
    v = 20
    logits = torch.zeros(300, v)
    logits[:, 5] = 10.0  # by far the most likely ...
    logits[:, 9] = 8.0
    banned = [[5, 9]] * 300  # ... and banned
    for temperature in (0.0, 1.0, 5.0):
        out = sample(logits, [SamplingParams(temperature=temperature)] * 300, banned=banned).sampled.tolist()
        assert not {5, 9} & set(out)
    # Banned only in its own row.
    out = sample(logits[:2], [SamplingParams(temperature=0.0)] * 2, banned=[[5], []]).sampled.tolist()
    assert out == [9, 5]


def test_build_flags():
    b = make_batch([SamplingParams(temperature=0.0), SamplingParams(top_k=3, seed=1)])
    assert (b.all_greedy, b.all_random, b.no_penalties, b.no_top_p_top_k_min_p) == (False, False, True, False)
    assert b.max_top_k == 3 and b.no_top_p and b.no_min_p and not b.no_top_k
    b = make_batch([SamplingParams(temperature=0.0, repetition_penalty=1.1)])
    assert b.all_greedy and not b.no_penalties and b.no_top_p_top_k_min_p
    with pytest.raises(ValueError):
        SamplingBatch.build([SamplingParams()], [], [[]], [[]], [[]], "cpu")
    with pytest.raises(ValueError):
        Sampler()(torch.zeros(2, 5), make_batch([SamplingParams()]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_on_cuda():
    n, v = 8, 1000
    logits = torch.randn(n, v, device="cuda")
    params = [SamplingParams(temperature=0.0 if i == 0 else 0.9, top_k=50 if i % 2 else 0, top_p=0.9,
                             min_p=0.01, repetition_penalty=1.2, presence_penalty=0.3, logprobs=2,
                             seed=i if i % 3 == 0 else None) for i in range(n)]
    gens = [seeded_generator(p.seed, "cuda") if p.seed is not None else None for p in params]
    batch = make_batch(params, generators=gens, prompts=[[1, 2, 3]] * n, outputs=[[4, 4]] * n,
                       banned=[[7]] * n, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = Sampler()(logits, batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(out.sampled.tolist()) == n
    assert all(lp is not None and len(lp.token_ids) == 3 for lp in out.logprobs)


def test_sample_rate_is_reasonable_for_a_real_vocab():
    # Smoke: a SmolLM2-sized vocabulary with every feature on works and yields valid ids.
    v = 49152
    logits = torch.randn(4, v)
    params = [SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.02, logprobs=3,
                             repetition_penalty=1.1)] * 4
    out = sample(logits, params, prompts=[[1, 2]] * 4, outputs=[[3]] * 4)
    assert all(0 <= t < v for t in out.sampled.tolist())
    assert all(math.isfinite(x) for lp in out.logprobs for x in lp.logprobs)
