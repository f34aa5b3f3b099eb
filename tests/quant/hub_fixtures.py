"""Hand-built checkpoints in each Hub format, from a tiny float model, each with its dequantized
float twin. Packing goes through tests/quant/unpack_reference.py (AutoAWQ's and AutoGPTQ's loops)
or the compressed-tensors package itself, never through localllm.quant, so loading them tests
our readers against independent writers."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import torch

from tests.quant import unpack_reference as ref

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHARED_INPUT = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "o_proj": "o_in",
                "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "down_in"}


def _rtn(w: torch.Tensor, group: int, sym: bool, g_idx: torch.Tensor | None = None):
    """Test-side round to nearest: (q [N, K], scales [N, G], zeros [N, G]) with W ~ (q - z) * s."""
    n, k = w.shape
    order = torch.argsort(g_idx, stable=True) if g_idx is not None else torch.arange(k)
    groups = w[:, order].reshape(n, k // group, group)
    if sym:
        scales = (groups.abs().amax(-1) / 7.5).half().float()
        zeros = torch.full_like(scales, 8)
    else:
        lo, hi = groups.amin(-1), groups.amax(-1)
        scales = ((hi - lo) / 15).clamp_min(1e-5).half().float()
        zeros = (-torch.round(lo / scales)).clamp(1, 15)
    index = g_idx.long() if g_idx is not None else torch.arange(k) // group
    q = torch.clamp(torch.round(w / scales[:, index]) + zeros[:, index], 0, 15)
    return q.long(), scales, zeros.long()


def _pack(fmt: str, w: torch.Tensor, group: int, g_idx, scheme_kwargs) -> tuple[dict, torch.Tensor]:
    """(tensors under the module's leaf names, the dequantized twin W [N, K])."""
    if fmt == "awq":
        q, s, z = _rtn(w, group, sym=False)
        tensors = {"qweight": ref.awq_pack(q.t().numpy()), "qzeros": ref.awq_pack(z.t().numpy()),
                   "scales": s.t().contiguous().half()}
        twin = ref.dequant_awq(tensors["qweight"], tensors["qzeros"], tensors["scales"], group)
        return tensors, torch.from_numpy(twin).float()
    if fmt == "gptq":
        q, s, z = _rtn(w, group, sym=scheme_kwargs.get("sym", True), g_idx=g_idx)
        qweight, qzeros = ref.gptq_pack(q.t().numpy(), z.t().numpy(), 4)
        idx = g_idx if g_idx is not None else (torch.arange(w.shape[1]) // group).int()
        tensors = {"qweight": qweight, "qzeros": qzeros, "scales": s.t().contiguous().half(), "g_idx": idx.int().clone()}
        twin = ref.dequant_gptq(qweight, qzeros, tensors["scales"], tensors["g_idx"], 4)
        return tensors, torch.from_numpy(twin).float()
    from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor

    scheme = scheme_kwargs["scheme"]
    if fmt == "ct-w4a16":
        scale = w.view(w.shape[0], -1, group).abs().amax(-1) / 7.5
        packed = PackedQuantizationCompressor.compress({"weight": w, "weight_scale": scale}, scheme)
        twin = PackedQuantizationCompressor.decompress(dict(packed), scheme)["weight"]
        return packed, twin.float()
    per_tensor = scheme_kwargs.get("per_tensor", False)
    scale = (w.abs().amax() if per_tensor else w.abs().amax(dim=1, keepdim=True)) / 448
    state = {"weight": w, "weight_scale": scale.reshape(1) if per_tensor else scale}
    packed = FloatQuantizationCompressor.compress(state, scheme)
    twin = FloatQuantizationCompressor.decompress(dict(packed), scheme)["weight"]
    if scheme_kwargs.get("static_input"):
        packed["input_scale"] = torch.tensor([0.02])
    return packed, twin.float()


def _quantization_config(fmt: str, group: int, scheme_kwargs) -> dict:
    if fmt == "awq":
        return {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm"}
    if fmt == "gptq":
        return {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": scheme_kwargs.get("act_order", False),
                "sym": scheme_kwargs.get("sym", True)}
    scheme = scheme_kwargs["scheme"]
    return {"quant_method": "compressed-tensors", "format": "pack-quantized" if fmt == "ct-w4a16" else "float-quantized",
            "quantization_status": "compressed", "ignore": ["lm_head"],
            "config_groups": {"group_0": json.loads(scheme.model_dump_json())}}


def ct_scheme(fmt: str, group: int, static_input: bool = False, per_tensor: bool = False, weight_only: bool = False):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    if fmt == "ct-w4a16":
        return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
            num_bits=4, type="int", symmetric=True, strategy="group", group_size=group))
    acts = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="tensor" if static_input else "token",
                            dynamic=not static_input)
    return QuantizationScheme(targets=["Linear"], input_activations=None if weight_only else acts, weights=QuantizationArgs(
        num_bits=8, type="float", symmetric=True, strategy="tensor" if per_tensor else "channel"))


def build_fixture(src_dir: str, quant_dir: str, twin_dir: str, fmt: str, group: int = 32, **scheme_kwargs) -> None:
    """Write quant_dir (fmt: awq | gptq | ct-w4a16 | ct-fp8) and twin_dir (its dequantized float twin)."""
    from safetensors.torch import load_file, save_file

    if fmt.startswith("ct-"):
        scheme_kwargs.setdefault("scheme", ct_scheme(fmt, group, scheme_kwargs.get("static_input", False),
                                                     scheme_kwargs.get("per_tensor", False),
                                                     scheme_kwargs.get("weight_only", False)))
    state = load_file(os.path.join(src_dir, "model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    g_idx_of: dict[tuple[str, str], torch.Tensor] = {}
    quant, twin = {}, {}
    for name, tensor in state.items():
        parts = name.split(".")
        if len(parts) > 2 and parts[-1] == "weight" and parts[-2] in LINEARS:
            module, leaf = ".".join(parts[:-1]), parts[-2]
            g_idx = None
            if fmt == "gptq" and scheme_kwargs.get("act_order"):
                key = (".".join(parts[:3]), SHARED_INPUT[leaf])
                k = tensor.shape[1]
                g_idx = g_idx_of.setdefault(key, (torch.randperm(k, generator=gen) // group).int())
            tensors, dequantized = _pack(fmt, tensor.float(), group, g_idx, scheme_kwargs)
            quant.update({f"{module}.{k}": v.contiguous() for k, v in tensors.items()})
            twin[name] = dequantized.contiguous()
        else:
            quant[name] = tensor
            twin[name] = tensor
    for directory, tensors, extra in ((quant_dir, quant, _quantization_config(fmt, group, scheme_kwargs)),
                                      (twin_dir, twin, None)):
        os.makedirs(directory, exist_ok=True)
        save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(src_dir, "config.json")) as f:
            config = json.load(f)
        if extra is not None:
            config["quantization_config"] = extra
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(config, f)
        for file in os.listdir(src_dir):
            if file.startswith(("tokenizer", "special_tokens")):
                shutil.copy(os.path.join(src_dir, file), directory)


def engine_model(path: str):
    """The engine's model for a checkpoint directory (CPU, float32)."""
    from localllm.models.loader import load_checkpoint
    from localllm.models.registry import build_model

    checkpoint = load_checkpoint(path)
    model = build_model(checkpoint.hf_config, torch.float32, torch.device("cpu"), max_model_len=256)
    model.load_weights(checkpoint.weights())
    return model


def engine_logits(path: str, token_ids: list[int], model=None) -> torch.Tensor:
    """float32 logits [T, V] of one prompt through the engine's loader and model (CPU, float32)."""
    from localllm.forward_context import set_forward_context
    from localllm.models.registry import kv_cache_spec
    from localllm.quant.layerwise import prefill_context

    model = model if model is not None else engine_model(path)
    num_layers, kv_heads, head_dim = kv_cache_spec(model.config)
    context, positions = prefill_context(1, len(token_ids), num_layers, kv_heads, head_dim, torch.float32,
                                         torch.device("cpu"))
    with torch.no_grad(), set_forward_context(context):
        hidden = model(torch.tensor(token_ids), positions)
        return model.compute_logits(hidden)


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


__all__ = ["build_fixture", "engine_logits", "engine_model", "max_rel_err", "np"]
