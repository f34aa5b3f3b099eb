"""The real SmolLM2-135M-Instruct Q4_1 GGUF: our loader + model against transformers loading the
same file (both dequantize to float32), and the file's tokenizer and chat template."""

from __future__ import annotations

import os

import pytest
import torch

from localllm.models.loader import load_checkpoint
from localllm.models.registry import build_model, kv_cache_spec
from tests.models.paged_driver import PagedDriver

MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    ckpt = load_checkpoint(smollm2_gguf)
    model = build_model(ckpt.hf_config, torch.float32, torch.device("cpu"), max_model_len=2048)
    model.load_weights(ckpt.weights)
    return ckpt, model


@pytest.fixture(scope="module")
def hf_smol(smollm2_gguf):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        os.path.dirname(smollm2_gguf), gguf_file=os.path.basename(smollm2_gguf), dtype=torch.float32
    ).eval()


def _prompt_ids(ckpt) -> list[int]:
    text = ckpt.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    return ckpt.tokenizer(text, add_special_tokens=False).input_ids


def test_config_and_tokenizer(smol):
    ckpt, model = smol
    cfg = ckpt.hf_config
    assert ckpt.format == "gguf" and ckpt.architecture == "LlamaForCausalLM"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.intermediate_size) == (576, 30, 49152, 1536)
    assert kv_cache_spec(cfg) == (30, 3, 64)
    assert cfg.tie_word_embeddings and ckpt.max_model_len == 8192
    assert ckpt.eos_token_ids == {2}
    assert ckpt.tokenizer.convert_ids_to_tokens(2) == "<|im_end|>"
    assert "<|im_start|>" in ckpt.chat_template
    text = ckpt.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = ckpt.tokenizer("Hello world!").input_ids
    assert ckpt.tokenizer.decode(ids) == "Hello world!"


def test_logits_match_transformers(smol, hf_smol):
    ckpt, model = smol
    ids = _prompt_ids(ckpt)
    driver = PagedDriver(model, ckpt.hf_config, num_blocks=16, block_size=16)
    ours = driver.step([("s", ids)])[0]
    with torch.no_grad():
        theirs = hf_smol(torch.tensor([ids])).logits[0, -1].float()
    torch.testing.assert_close(ours, theirs, atol=5e-4, rtol=1e-4)


def test_greedy_20_tokens_match_transformers(smol, hf_smol):
    ckpt, model = smol
    ids = _prompt_ids(ckpt)
    driver = PagedDriver(model, ckpt.hf_config, num_blocks=16, block_size=16)
    ours = driver.generate("s", ids, max_new_tokens=20, chunk=16)  # chunked prefill over the cache
    with torch.no_grad():
        theirs = hf_smol.generate(
            torch.tensor([ids]), max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=2
        )[0, len(ids):].tolist()
    assert ours == theirs, (ckpt.tokenizer.decode(ours), ckpt.tokenizer.decode(theirs))
    assert "Paris" in ckpt.tokenizer.decode(ours)
