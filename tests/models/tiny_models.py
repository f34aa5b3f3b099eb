"""Tiny random-weight HF checkpoints for model tests, written to disk the way transformers does."""

from __future__ import annotations

import os

import torch

VOCAB_SIZE = 256


def tiny_tokenizer():
    """A byte-ish word-level tokenizer over VOCAB_SIZE ids, eos = id 1."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, "<s>": 2}
    for i in range(3, VOCAB_SIZE):
        vocab[f"w{i}"] = i
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>", bos_token="<s>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tok


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that logits differ meaningfully between wrong and right models."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)


def save_tiny_model(hf_config, path, seed: int = 0, generation_config: dict | None = None):
    """An HF model of this config with random weights, saved as safetensors with a tokenizer."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    randomize_(model, seed)
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    if generation_config is not None:
        import json

        with open(os.path.join(path, "generation_config.json"), "w") as f:
            json.dump(generation_config, f)
    return model
