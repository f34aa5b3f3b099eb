"""Comparing two runs of the engine that differ only in kernels (Triton vs the torch reference)."""

from __future__ import annotations


def compare_greedy(reference, ours, tolerance: float, min_exact_fraction: float = 0.75) -> dict:
    """Greedy outputs (RequestOutputs asked with logprobs >= 2) must match token for token,
    except from a first divergence where the reference's top-2 logprobs are within `tolerance`
    and ours picked one of the two. Most answers must match exactly. Returns the verdict counts."""
    verdicts = {"exact": 0, "near-tie": 0}
    for ref, out in zip(reference, ours, strict=True):
        theirs, mine = ref.outputs[0].token_ids, out.outputs[0].token_ids
        if theirs == mine:
            verdicts["exact"] += 1
            continue
        i = next((k for k, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
        assert i < len(mine) and i < len(theirs), f"one answer stopped early at {i}: ours {mine}, reference {theirs}"
        top = sorted(ref.outputs[0].logprobs[i].items(), key=lambda kv: -kv[1].logprob)[:2]
        gap = top[0][1].logprob - top[1][1].logprob
        assert gap < tolerance and mine[i] in (top[0][0], top[1][0]), (
            f"divergence at token {i} with reference top-2 gap {gap:.3g}: ours {mine}, reference {theirs}"
        )
        verdicts["near-tie"] += 1
    assert verdicts["exact"] >= len(reference) * min_exact_fraction, verdicts
    return verdicts
