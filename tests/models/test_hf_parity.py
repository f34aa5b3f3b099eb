"""Logit parity with transformers on tiny random-weight models of every supported family.

Each model is saved by transformers as safetensors, loaded back through our loader, then run over
a NaN-poisoned paged cache: chunked prefill (so later chunks attend to cached context), then
greedy decode. At every step our last-token logits must match HF's full forward of the same tokens.
"""

from __future__ import annotations

import pytest
import torch

from localllm.models.loader import load_checkpoint
from localllm.models.registry import build_model
from tests.models.paged_driver import PagedDriver
from tests.models.tiny_models import VOCAB_SIZE, save_tiny_model

ATOL = 1e-4


def _configs():
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  max_position_embeddings=256, rms_norm_eps=1e-5, eos_token_id=1, bos_token_id=2)
    return {
        "llama": LlamaConfig(num_attention_heads=4, num_key_value_heads=2, architectures=["LlamaForCausalLM"], **common),
        "llama_gqa8_hd128": LlamaConfig(
            **{**common, "hidden_size": 128}, num_attention_heads=8, num_key_value_heads=1, head_dim=128,
            architectures=["LlamaForCausalLM"],
        ),
        "llama3_rope": LlamaConfig(
            num_attention_heads=4, num_key_value_heads=2, architectures=["LlamaForCausalLM"], rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 64},
            **common,
        ),
        "llama_linear_rope": LlamaConfig(
            num_attention_heads=4, num_key_value_heads=4, architectures=["LlamaForCausalLM"],
            rope_scaling={"rope_type": "linear", "factor": 2.0}, **common,
        ),
        "llama_tied": LlamaConfig(
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
            architectures=["LlamaForCausalLM"], **common,
        ),
        "mistral": MistralConfig(
            num_attention_heads=4, num_key_value_heads=1, sliding_window=4096, architectures=["MistralForCausalLM"],
            **common,
        ),
        "qwen2": Qwen2Config(
            num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=True,
            architectures=["Qwen2ForCausalLM"], **common,
        ),
        "qwen3": Qwen3Config(
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, architectures=["Qwen3ForCausalLM"], **common,
        ),
    }


CONFIG_NAMES = sorted(_configs())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (hf_model, our_model, checkpoint); built once per module."""
    out = {}
    for i, (name, cfg) in enumerate(_configs().items()):
        path = tmp_path_factory.mktemp(name)
        hf = save_tiny_model(cfg, path, seed=i, generation_config={"eos_token_id": [1, 5]})
        ckpt = load_checkpoint(str(path))
        model = build_model(ckpt.hf_config, torch.float32, torch.device("cpu"))
        model.load_weights(ckpt.weights)
        out[name] = (hf, model, ckpt)
    return out


@torch.no_grad()
def _hf_last_logits(hf, tokens: list[int]) -> torch.Tensor:
    return hf(torch.tensor([tokens])).logits[0, -1].float()


def _prompt(n: int, seed: int) -> list[int]:
    return torch.randint(3, VOCAB_SIZE, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_prefill_and_decode_match_hf(checkpoints, name):
    hf, model, _ = checkpoints[name]
    driver = PagedDriver(model, model.config, num_blocks=16, block_size=16)
    tokens = _prompt(21, seed=len(name))
    # chunked prefill: 13 tokens, then 8 more attending to the 13 cached ones
    driver.step([("s", tokens[:13])])
    logits = driver.step([("s", tokens[13:])])[0]
    for _ in range(6):
        expected = _hf_last_logits(hf, tokens)
        torch.testing.assert_close(logits, expected, atol=ATOL, rtol=1e-4)
        top2 = expected.topk(2).values
        if top2[0] - top2[1] > 1e-3:  # greedy choice is well defined
            assert int(logits.argmax()) == int(expected.argmax())
        tokens.append(int(expected.argmax()))
        logits = driver.step([("s", [tokens[-1]])])[0]


def test_ragged_batch_matches_each_sequence_alone(checkpoints):
    hf, model, _ = checkpoints["llama"]
    prompts = {"a": _prompt(5, 1), "b": _prompt(17, 2), "c": _prompt(1, 3), "d": _prompt(33, 4)}
    alone = {}
    for sid, prompt in prompts.items():
        driver = PagedDriver(model, model.config, num_blocks=32, block_size=16)
        alone[sid] = [driver.step([(sid, prompt)])[0], driver.step([(sid, [7])])[0], driver.step([(sid, [9])])[0]]
    driver = PagedDriver(model, model.config, num_blocks=32, block_size=16)
    # step 1: all prefill together (ragged)
    first = driver.step([("a", prompts["a"]), ("b", prompts["b"]), ("c", prompts["c"])])
    # step 2: mixed batch: a, b, c decode while d prefills in the same forward
    second = driver.step([("a", [7]), ("d", prompts["d"]), ("b", [7]), ("c", [7])])
    # step 3: decode-only batch of four
    third = driver.step([("d", [7]), ("c", [9]), ("b", [9]), ("a", [9])])
    for i, sid in enumerate("abc"):
        torch.testing.assert_close(first[i], alone[sid][0], atol=ATOL, rtol=1e-4)
    for i, sid in enumerate("adbc"):
        torch.testing.assert_close(second[i], alone[sid][0 if sid == "d" else 1], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(third[0], alone["d"][1], atol=ATOL, rtol=1e-4)
    for i, sid in zip((1, 2, 3), "cba"):
        torch.testing.assert_close(third[i], alone[sid][2], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(alone["d"][0], _hf_last_logits(hf, prompts["d"]), atol=ATOL, rtol=1e-4)


def test_greedy_generation_matches_hf(checkpoints):
    hf, model, _ = checkpoints["qwen3"]
    prompt = _prompt(9, 11)
    driver = PagedDriver(model, model.config, num_blocks=8, block_size=16)
    ours = driver.generate("s", prompt, max_new_tokens=12, chunk=4)
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(prompt):].tolist()
    assert ours == theirs


def test_checkpoint_fields(checkpoints):
    _, model, ckpt = checkpoints["llama_tied"]
    assert ckpt.format == "safetensors"
    assert ckpt.eos_token_ids == {1, 5}  # tokenizer eos + generation_config list
    assert ckpt.max_model_len == 256
    assert ckpt.chat_template and ckpt.tokenizer.eos_token_id == 1
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert (model.num_layers, model.num_kv_heads, model.head_dim) == (2, 2, 16)
    assert len(ckpt.weights) == len(list(ckpt.weights))  # re-iterable, lazily reopened


def test_bf16_model_runs(checkpoints):
    """Same weights in bfloat16: close to fp32 (loose), and no dtype errors along the way."""
    _, model32, ckpt = checkpoints["qwen2"]
    model = build_model(ckpt.hf_config, torch.bfloat16, torch.device("cpu"))
    model.load_weights(ckpt.weights)
    prompt = _prompt(10, 5)
    ref = PagedDriver(model32, model32.config).step([("s", prompt)])[0]
    got = PagedDriver(model, model.config, dtype=torch.bfloat16).step([("s", prompt)])[0]
    assert got.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(got, ref, dim=0) > 0.99


def test_sharded_checkpoint_with_index(tmp_path):
    """save_pretrained's sharded layout (index + several files), bf16 on disk, loads into fp32."""
    from transformers import AutoModelForCausalLM

    cfg = _configs()["llama"]
    hf = save_tiny_model(cfg, tmp_path / "src", seed=7)
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="40KB")
    tiny = load_checkpoint(str(tmp_path / "src"))
    tiny.tokenizer.save_pretrained(tmp_path / "sharded")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ckpt = load_checkpoint(str(tmp_path / "sharded"))
    model = build_model(ckpt.hf_config, torch.float32, torch.device("cpu"))
    model.load_weights(ckpt.weights)
    hf16 = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded", dtype=torch.float32).eval()
    prompt = _prompt(12, 9)
    ours = PagedDriver(model, model.config).step([("s", prompt)])[0]
    torch.testing.assert_close(ours, _hf_last_logits(hf16, prompt), atol=ATOL, rtol=1e-4)
