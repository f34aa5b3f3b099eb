"""GGUF files written the way llama.cpp's converter writes them (Q/K rows permuted for "llama",
rope_freqs for Llama 3 rope scaling, qwen2 biases, qwen3 q/k norms), from tiny HF models: loading
them must give back the HF model's logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from localllm.models.loader import load_checkpoint
from localllm.models.registry import build_model
from tests.models.paged_driver import PagedDriver
from tests.models.tiny_models import randomize_

VOCAB_SIZE = 260  # 256 byte tokens + 4 specials

_BLOCK = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def _gguf_name(hf_name: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf_name in fixed:
        return fixed[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    module, suffix = rest.rsplit(".", 1)
    return f"blk.{layer}.{_BLOCK[module]}.{suffix}"


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_factors(cfg) -> np.ndarray:
    """llama.cpp's converter: rope_freqs for rope_type llama3."""
    import math

    rp = cfg.rope_parameters
    dim = cfg.head_dim
    freqs = 1.0 / (rp["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high, old = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"], rp["original_max_position_embeddings"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(hf_model, arch: str, path: str) -> None:
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    cfg = hf_model.config
    w = gguf.GGUFWriter(path, arch)
    w.add_name("tiny test model")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    tokens = list(bytes_to_unicode().values()) + ["Ġt", "ab", "<s>", "</s>"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * 258 + [3] * 2)
    w.add_token_scores([0.0] * VOCAB_SIZE)
    w.add_token_merges(["Ġ t", "a b"])
    w.add_bos_token_id(258)
    w.add_eos_token_id(259)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    if cfg.rope_parameters.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", _llama3_rope_factors(cfg))
    for name, tensor in hf_model.state_dict().items():
        if cfg.tie_word_embeddings and name == "lm_head.weight":
            continue
        data = tensor.float().numpy().copy()
        if arch == "llama" and ".q_proj." in name:
            data = _permute(data, cfg.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            data = _permute(data, cfg.num_key_value_heads)
        if name.endswith("mlp.down_proj.weight"):  # exercise F16 storage too
            data = data.astype(np.float16)
        w.add_tensor(_gguf_name(name), data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _hf_models():
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5)
    return {
        "llama": ("llama", LlamaConfig(head_dim=16, **common)),
        "llama3": ("llama", LlamaConfig(
            head_dim=16, tie_word_embeddings=True, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 64}, **common)),
        "qwen2": ("qwen2", Qwen2Config(head_dim=16, rope_theta=1e6, **common)),
        "qwen3": ("qwen3", Qwen3Config(head_dim=32, tie_word_embeddings=True, **common)),
    }


@pytest.mark.parametrize("name", sorted(_hf_models()))
def test_gguf_round_trip_matches_hf(name, tmp_path):
    from transformers import AutoModelForCausalLM

    arch, cfg = _hf_models()[name]
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    randomize_(hf, seed=3)
    with torch.no_grad():  # F16 storage: round HF's copy the same way
        for layer in hf.model.layers:
            layer.mlp.down_proj.weight.copy_(layer.mlp.down_proj.weight.half().float())
    path = str(tmp_path / f"{name}.gguf")
    write_gguf(hf, arch, path)

    ckpt = load_checkpoint(path)
    assert ckpt.format == "gguf" and ckpt.hf_config.tie_word_embeddings == cfg.tie_word_embeddings
    assert ckpt.eos_token_ids == {259} and ckpt.chat_template.startswith("{% for")
    assert ckpt.tokenizer("tab").input_ids == [ord("t") - 33, 257]  # byte "t", then the "ab" merge
    if name == "llama3":
        assert ckpt.hf_config.rope_parameters["rope_type"] == "llama3"
    model = build_model(ckpt.hf_config, torch.float32, torch.device("cpu"))
    model.load_weights(ckpt.weights)
    tokens = torch.randint(0, VOCAB_SIZE, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    driver = PagedDriver(model, ckpt.hf_config, num_blocks=8, block_size=16)
    driver.step([("s", tokens[:25])])
    ours = driver.step([("s", tokens[25:])])[0]
    with torch.no_grad():
        theirs = hf(torch.tensor([tokens])).logits[0, -1]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
