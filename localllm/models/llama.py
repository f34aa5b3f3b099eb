"""Llama-family decoder: Llama 2/3/3.1/3.2, Mistral, Qwen2/2.5, Qwen3 (one class, HF module names).

Variants differ only in a few switches read from the HF config (see _Variant). Sliding-window
attention is not implemented: a model that uses it runs only with max_model_len <= its window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from localllm.errors import ModelLoadError
from localllm.layers.activation import SiluAndMul
from localllm.layers.attention import Attention
from localllm.layers.embedding import LMHead, VocabEmbedding
from localllm.layers.linear import Linear, MergedLinear, QKVLinear
from localllm.layers.quantized_linear import finish_loading, make_linear
from localllm.layers.rmsnorm import RMSNorm
from localllm.layers.rotary import SUPPORTED_ROPE_TYPES, RotaryEmbedding, rope_parameters, rope_type
from localllm.models.registry import kv_cache_spec

# Checkpoint names that hold no weights of ours (precomputed rotary tables).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")
# HF name fragment -> (fused module's fragment, shard id)
_FUSED = {
    ".q_proj.": (".qkv_proj.", "q"),
    ".k_proj.": (".qkv_proj.", "k"),
    ".v_proj.": (".qkv_proj.", "v"),
    ".gate_proj.": (".gate_up_proj.", 0),
    ".up_proj.": (".gate_up_proj.", 1),
}


def sliding_window(hf_config) -> int | None:
    """The attention window a config asks for, or None when every layer attends to all positions."""
    window = getattr(hf_config, "sliding_window", None)
    if not window:
        return None
    if hf_config.model_type in ("qwen2", "qwen3"):
        # Qwen configs carry a window they only use when use_sliding_window is set.
        layer_types = getattr(hf_config, "layer_types", None) or []
        uses = getattr(hf_config, "use_sliding_window", False) and "sliding_attention" in layer_types
        return int(window) if uses else None
    return int(window)


@dataclass(frozen=True)
class _Variant:
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool  # Qwen3: RMSNorm over each head of q and k, before rotary

    @classmethod
    def of(cls, hf_config) -> "_Variant":
        model_type = hf_config.model_type
        attention_bias = bool(getattr(hf_config, "attention_bias", False))
        if model_type == "qwen2":
            return cls(qkv_bias=True, o_bias=False, mlp_bias=False, qk_norm=False)
        if model_type == "qwen3":
            return cls(qkv_bias=attention_bias, o_bias=attention_bias, mlp_bias=False, qk_norm=True)
        return cls(attention_bias, attention_bias, bool(getattr(hf_config, "mlp_bias", False)), qk_norm=False)


class LlamaAttention(nn.Module):
    def __init__(self, config, variant: _Variant, layer_idx: int, rotary_emb: RotaryEmbedding, dtype, device):
        super().__init__()
        _, num_kv_heads, head_dim = kv_cache_spec(config)
        num_heads = config.num_attention_heads
        hidden = config.hidden_size
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_size, self.kv_size = num_heads * head_dim, num_kv_heads * head_dim
        prefix = f"model.layers.{layer_idx}.self_attn"  # NOTE: quantized checkpoints may leave modules dense by name
        self.qkv_proj = make_linear(config, f"{prefix}.qkv_proj", QKVLinear, hidden, head_dim, num_heads, num_kv_heads,
                                    variant.qkv_bias, dtype, device)
        self.o_proj = make_linear(config, f"{prefix}.o_proj", Linear, self.q_size, hidden, variant.o_bias, dtype, device)
        self.q_norm = RMSNorm(head_dim, config.rms_norm_eps, dtype, device) if variant.qk_norm else None
        self.k_norm = RMSNorm(head_dim, config.rms_norm_eps, dtype, device) if variant.qk_norm else None
        self.rotary_emb = rotary_emb
        self.attn = Attention(num_heads, head_dim, head_dim**-0.5, num_kv_heads, layer_idx)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.q_norm is not None:
            q = self.q_norm(q.unflatten(-1, (self.num_heads, self.head_dim))).flatten(-2)
            k = self.k_norm(k.unflatten(-1, (self.num_kv_heads, self.head_dim))).flatten(-2)
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v))


class LlamaMLP(nn.Module):
    def __init__(self, config, variant: _Variant, dtype, device, prefix: str = "mlp"):
        super().__init__()
        hidden, inter = config.hidden_size, config.intermediate_size
        self.gate_up_proj = make_linear(config, f"{prefix}.gate_up_proj", MergedLinear, hidden, [inter, inter],
                                        variant.mlp_bias, dtype, device)
        self.act_fn = SiluAndMul()
        self.down_proj = make_linear(config, f"{prefix}.down_proj", Linear, inter, hidden, variant.mlp_bias, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, variant: _Variant, layer_idx: int, rotary_emb: RotaryEmbedding, dtype, device):
        super().__init__()
        self.self_attn = LlamaAttention(config, variant, layer_idx, rotary_emb, dtype, device)
        self.mlp = LlamaMLP(config, variant, dtype, device, prefix=f"model.layers.{layer_idx}.mlp")
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)

    def forward(self, positions, hidden, residual):
        # NOTE: residual carries the un-normalized stream; each norm fuses the previous add.
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config, variant: _Variant, max_position: int, dtype, device):
        super().__init__()
        tied = bool(getattr(config, "tie_word_embeddings", False))
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size, dtype, device, used_as_lm_head=tied)
        _, _, head_dim = kv_cache_spec(config)
        theta, scaling = rope_parameters(config)
        # NOTE: one cos/sin table shared by every layer (building one per layer cost ~40 ms each).
        rotary_emb = RotaryEmbedding(head_dim, head_dim, max_position, theta, scaling, dtype, device)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, variant, i, rotary_emb, dtype, device) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    """forward(input_ids int64 [T], positions int64 [T]) -> hidden [T, H], inside set_forward_context;
    compute_logits(hidden [N, H]) -> float32 [N, vocab_size]."""

    def __init__(self, config, dtype: torch.dtype, device: torch.device, max_model_len: int | None = None,
                 source: str = "config.json"):
        super().__init__()
        _check_config(config, max_model_len, source)
        self.config = config
        self.source = source
        self.num_layers, self.num_kv_heads, self.head_dim = kv_cache_spec(config)
        max_position = max_model_len or config.max_position_embeddings
        self.model = LlamaModel(config, _Variant.of(config), max_position, dtype, device)
        tie = self.model.embed_tokens if getattr(config, "tie_word_embeddings", False) else None
        self.lm_head = LMHead(config.vocab_size, config.hidden_size, dtype, device, tie_to=tie)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors in (q/k/v -> qkv_proj shards, gate/up -> gate_up_proj shards).

        Raises ModelLoadError on an unknown name, a shape mismatch, or weights left missing.
        """
        params = dict(self.named_parameters())
        expected = {(name, shard) for name, shards in _param_shards(self).items() for shard in shards}
        loaded: set[tuple[str, object]] = set()
        with torch.no_grad():
            for name, tensor in weights:
                if name.endswith(_IGNORED_SUFFIXES) or (self.lm_head.tied and name == "lm_head.weight"):
                    continue
                target, shard = name, None
                for fragment, (fused, shard_id) in _FUSED.items():
                    if fragment in name:
                        target, shard = name.replace(fragment, fused), shard_id
                        break
                param = params.get(target)
                if param is None:
                    raise ModelLoadError(self.source, f"unexpected weight {name!r} for {type(self).__name__}")
                try:
                    param.weight_loader(param, tensor, shard)
                except ValueError as e:
                    raise ModelLoadError(self.source, f"weight {name!r}: {e}") from None
                loaded.add((target, shard))
        missing = sorted(f"{n}[{s}]" if s is not None else n for n, s in expected - loaded)
        if missing:
            more = f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""
            raise ModelLoadError(self.source, f"missing weights: {', '.join(missing[:8])}{more}")
        finish_loading(self, self.source)  # quantized layers: file tensors -> the engine's layout


def _param_shards(model: nn.Module) -> dict[str, list]:
    """Every parameter name -> the shard ids that must be loaded into it ([None]: unfused)."""
    shards: dict[str, list] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # a tied weight: loaded through its first owner
                continue
            seen.add(id(param))
            full = f"{module_name}.{param_name}" if module_name else param_name
            shards[full] = module.shard_ids() if hasattr(module, "shard_ids") else [None]
    return shards


def _check_config(config, max_model_len: int | None, source: str) -> None:
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise ModelLoadError(source, f"hidden_act {act!r} is not supported (only 'silu')")
    _, scaling = rope_parameters(config)
    if rope_type(scaling) not in SUPPORTED_ROPE_TYPES:
        raise ModelLoadError(
            source, f"rope scaling {rope_type(scaling)!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    window = sliding_window(config)
    length = max_model_len or config.max_position_embeddings
    if window is not None and length > window:
        raise ModelLoadError(
            source,
            f"sliding-window attention ({window} tokens) is not implemented; run with max_model_len <= {window} "
            f"(asked for {length})",
        )
