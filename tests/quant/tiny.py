"""Tiny Llama-family checkpoints for the quantization tests, with a byte-level tokenizer (one
token per UTF-8 byte, so real text such as the calibration corpus tokenizes meaningfully).

trained_tiny_model() trains one briefly on the built-in calibration text: random weights have no
salient channels and a near-uniform next-token distribution, so a quantization method's gain
over round-to-nearest only shows on a model that has learned something.
"""

from __future__ import annotations

import os

import torch

VOCAB = 256


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = sorted(alphabet, key=lambda ch: _byte_of(ch))
    vocab = {ch: i for i, ch in enumerate(byte_to_char)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=byte_to_char[0])


def _byte_of(ch: str) -> int:
    """Inverse of GPT-2's bytes_to_unicode."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, n = {}, 0
    for b in range(256):
        if b in printable:
            mapping[chr(b)] = b
        else:
            mapping[chr(256 + n)] = b
            n += 1
    return mapping[ch]


def tiny_config(arch: str = "llama", layers: int = 2, hidden: int = 64, inter: int = 128, heads: int = 4,
                kv_heads: int = 2, **extra):
    import transformers

    cls, name = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                 "qwen3": ("Qwen3Config", "Qwen3ForCausalLM")}[arch]
    kwargs = dict(architectures=[name], vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                  head_dim=hidden // heads, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  bos_token_id=None, eos_token_id=0)
    if arch == "qwen3":
        kwargs["attention_bias"] = False
    kwargs.update(extra)
    return getattr(transformers, cls)(**kwargs)


def save_model(model, path: str, dtype=torch.float32) -> str:
    model.to(dtype).save_pretrained(path, safe_serialization=True)
    byte_tokenizer().save_pretrained(path)
    return path


def random_tiny_model(path: str, seed: int = 0, **config_kwargs) -> str:
    from transformers import AutoModelForCausalLM

    from tests.models.tiny_models import randomize_

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(**config_kwargs), dtype=torch.float32)
    randomize_(model, seed)
    return save_model(model.eval(), path)


def trained_tiny_model(path: str, steps: int = 60, seed: int = 0, seq_len: int = 128, batch: int = 8,
                       lr: float = 1e-2, **config_kwargs) -> str:
    """A tiny model trained on bytes of the built-in calibration text (a few seconds on a CPU)."""
    from transformers import AutoModelForCausalLM

    from localllm.quant.calibration import builtin_texts

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(**config_kwargs), dtype=torch.float32)
    data = torch.tensor(list(builtin_texts()[0].encode("utf-8")), dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    denormals = torch.set_flush_denormal(True)  # NOTE: tiny gradients turn denormal; they slow a CPU ~10x
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - seq_len - 1, (batch,), generator=gen)
        ids = torch.stack([data[s : s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_flush_denormal(False) if denormals else None
    add_outlier_channels_(model, gen)
    os.makedirs(path, exist_ok=True)
    return save_model(model.eval(), path)


@torch.no_grad()
def add_outlier_channels_(model, gen: torch.Generator, count: int = 4, factor: float = 30.0) -> None:
    """Give each layer a few input channels with large activations, as trained LLMs have, without
    changing the function: the norm before q/k/v (and gate/up) scales channel c by `factor`, the
    columns of the linears it feeds are divided by it. Round to nearest then spends its grid on
    the small columns; AWQ and GPTQ can see that those channels matter."""
    for layer in model.model.layers:
        for norm, linears in ((layer.input_layernorm, ("q_proj", "k_proj", "v_proj")),
                              (layer.post_attention_layernorm, ("gate_proj", "up_proj"))):
            channels = torch.randperm(norm.weight.numel(), generator=gen)[:count]
            norm.weight[channels] *= factor
            parent = layer.self_attn if linears[0] == "q_proj" else layer.mlp
            for name in linears:
                getattr(parent, name).weight[:, channels] /= factor


def smollm2_prefix(gguf_path: str, path: str, num_layers: int) -> str:
    """The first num_layers decoder layers of SmolLM2-135M (from its GGUF, dequantized to float32)
    as a Hugging Face directory: real trained weights and activations, at a fraction of the cost."""
    import json

    from safetensors.torch import save_file

    from localllm.models.loader import load_checkpoint
    from localllm.quant.weights import open_weights

    checkpoint = load_checkpoint(gguf_path)
    source = open_weights(checkpoint)
    keep = [n for n in source.names()
            if not n.startswith("model.layers.") or int(n.split(".")[2]) < num_layers]
    os.makedirs(path, exist_ok=True)
    save_file({n: source.get(n).contiguous() for n in keep}, os.path.join(path, "model.safetensors"),
              metadata={"format": "pt"})
    config = checkpoint.hf_config.to_dict()
    config["num_hidden_layers"] = num_layers
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    checkpoint.tokenizer.save_pretrained(path)
    return path
