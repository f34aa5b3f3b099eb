"""Architecture name (config.architectures[0]) -> model class, imported lazily.

build_model() is the runner's one way to get a model; kv_cache_spec() tells it how to shape the
KV cache without building anything.
"""

from __future__ import annotations

import importlib

import torch

from localllm.errors import UnsupportedModelError

# architecture -> (module, class). Mistral and Qwen2/Qwen3 share the Llama implementation.
_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("localllm.models.llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("localllm.models.llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("localllm.models.llama", "LlamaForCausalLM"),
    "Qwen3ForCausalLM": ("localllm.models.llama", "LlamaForCausalLM"),
}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def architecture_of(hf_config, source: str = "config.json") -> str:
    """The first listed architecture, or UnsupportedModelError when we have no class for it."""
    architectures = getattr(hf_config, "architectures", None) or []
    if not architectures:
        raise UnsupportedModelError(source, "<none listed in config.architectures>", supported_architectures())
    for arch in architectures:
        if arch in _MODELS:
            return arch
    raise UnsupportedModelError(source, architectures[0], supported_architectures())


def get_model_class(architecture: str, source: str = "config.json") -> type:
    if architecture not in _MODELS:
        raise UnsupportedModelError(source, architecture, supported_architectures())
    module_name, class_name = _MODELS[architecture]
    return getattr(importlib.import_module(module_name), class_name)


def build_model(
    hf_config, dtype: torch.dtype, device: torch.device, max_model_len: int | None = None, source: str = "config.json"
):
    """An uninitialized model (weights empty until load_weights) in eval mode.

    max_model_len, when given, bounds the rotary table (default: max_position_embeddings).
    """
    cls = get_model_class(architecture_of(hf_config, source), source)
    model = cls(hf_config, dtype=dtype, device=torch.device(device), max_model_len=max_model_len, source=source)
    return model.eval()


def kv_cache_spec(hf_config) -> tuple[int, int, int]:
    """(num_layers, num_kv_heads, head_dim): one layer's cache is [2, num_blocks, block_size, num_kv_heads, head_dim]."""
    num_heads = hf_config.num_attention_heads
    num_kv_heads = getattr(hf_config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
    return hf_config.num_hidden_layers, num_kv_heads, head_dim
