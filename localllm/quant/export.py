"""One calibrated decoder layer (the engine's fused modules) -> its tensors under Hugging Face
names in the output format: fused q/k/v and gate/up rows split back into q_proj, k_proj, v_proj,
gate_proj, up_proj; norms and biases in the output dtype."""

from __future__ import annotations

import re

import torch
from torch import nn

from localllm.quant.formats import awq, compressed_tensors, gptq
from localllm.quant.rtn import GroupQuant

# the checkpoint format each method writes
FORMAT_OF_METHOD = {"awq": "awq", "rtn": "awq", "gptq": "gptq", "fp8": "fp8"}


def parts(layer: nn.Module) -> dict[str, list[tuple[str, int, int]]]:
    """engine linear name -> [(HF name, first row, end row)]."""
    attn, mlp = layer.self_attn, layer.mlp
    q, kv, inter = attn.q_size, attn.kv_size, mlp.down_proj.in_features
    return {
        "self_attn.qkv_proj": [("self_attn.q_proj", 0, q), ("self_attn.k_proj", q, q + kv),
                               ("self_attn.v_proj", q + kv, q + 2 * kv)],
        "self_attn.o_proj": [("self_attn.o_proj", 0, attn.o_proj.out_features)],
        "mlp.gate_up_proj": [("mlp.gate_proj", 0, inter), ("mlp.up_proj", inter, 2 * inter)],
        "mlp.down_proj": [("mlp.down_proj", 0, mlp.down_proj.out_features)],
    }


def rows_of(gq: GroupQuant, lo: int, hi: int) -> GroupQuant:
    return GroupQuant(gq.q[lo:hi], gq.scales[lo:hi], gq.zeros[lo:hi], gq.bits, gq.group_size, gq.g_idx)


def export_layer(index: int, layer: nn.Module, quantized: dict[str, object], fmt: str,
                 dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """quantized: engine linear name -> GroupQuant (awq/gptq), (fp8 weight, scales [N, 1]) or None
    (left in 16 bits: written as a plain weight)."""
    prefix = f"model.layers.{index}."
    out: dict[str, torch.Tensor] = {}
    for name, param in layer.named_parameters():
        if name.endswith("norm.weight"):
            out[prefix + name] = param.detach().to(dtype)
    for engine_name, hf_parts in parts(layer).items():
        linear = layer.get_submodule(engine_name)
        result = quantized[engine_name]
        bias = getattr(linear, "bias", None)
        for hf_name, lo, hi in hf_parts:
            module = prefix + hf_name
            if result is None:  # NOTE: kept in 16 bits; the config's ignore names it (quantization_config)
                out[f"{module}.weight"] = linear.weight.detach()[lo:hi].to(dtype)
            elif fmt == "fp8":
                weight, scales = result
                out.update(compressed_tensors.write_fp8(module, weight[lo:hi], scales[lo:hi]))
            elif fmt == "awq":
                out.update(awq.write(module, rows_of(result, lo, hi)))
            else:
                out.update(gptq.write(module, rows_of(result, lo, hi)))
            if bias is not None:
                out[f"{module}.bias"] = bias.detach()[lo:hi].to(dtype)
    return out


def ignored_modules(kept: tuple[str, ...]) -> list[str]:
    """Engine linear names ("model.layers.3.mlp.gate_up_proj") -> the checkpoint modules they
    stand for, as compressed-tensors' ignore lists them ("model.layers.3.mlp.gate_proj", ...)."""
    from localllm.layers.quantized_linear import checkpoint_names

    return [module for name in kept for module in checkpoint_names(name)]


def quantization_config(method: str, bits: int, group_size: int, sym: bool, act_order: bool,
                        damp_percent: float, fp8_weight_only: bool = False, kept: tuple[str, ...] = (),
                        kept_activations: tuple[str, ...] = ()) -> dict:
    """kept: FP8 engine linears left in 16 bits; kept_activations: FP8 engine linears with FP8
    weights and 16-bit activations."""
    fmt = FORMAT_OF_METHOD[method]
    if (kept or kept_activations) and fmt != "fp8":
        raise ValueError(f"only FP8 keeps linears in 16 bits, not {method}")
    if fmt == "awq":
        return awq.config(bits, group_size)
    if fmt == "gptq":
        return gptq.config(bits, group_size, act_order, sym, damp_percent)
    return compressed_tensors.fp8_config(["lm_head", *ignored_modules(kept)], weight_only=fp8_weight_only,
                                         activations_16bit=[fused_target(name) for name in kept_activations])


def fused_target(name: str) -> str:
    """A compressed-tensors "re:" target for one engine linear that matches it under its fused
    name ("model.layers.3.mlp.gate_up_proj": what vLLM matches a config group's targets against,
    before it tries the "Linear" class) and under its checkpoint parts ("...gate_proj",
    "...up_proj": what compressed-tensors and transformers match, by name before the class)."""
    from localllm.layers.quantized_linear import checkpoint_names

    prefix, _, leaf = name.rpartition(".")
    stems = [leaf.removesuffix("_proj")]
    stems += [p.rpartition(".")[2].removesuffix("_proj") for p in checkpoint_names(name) if p != name]
    return "re:^" + re.escape(prefix + ".") + "(" + "|".join(stems) + ")_proj$"
