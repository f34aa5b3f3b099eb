"""The layer-by-layer pass of quantize: embed -> each decoder layer (score the held-out windows
through the original layer, calibrate, quantize, write) -> final norm and head (the original
model's held-out scores). Peak memory: one layer plus the windows' hidden states."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from localllm.kernels import reference
from localllm.quant.awq import awq_layer
from localllm.quant.evaluate import nll_and_top1
from localllm.quant.export import FORMAT_OF_METHOD, export_layer
from localllm.quant.fp8 import gptq_fp8, mse_scales, quantize_fp8_rows
from localllm.quant.gptq import gptq_quantize
from localllm.quant.layerwise import LINEARS, InputObserver, LayerRunner, layer_prefix
from localllm.quant.memory import PeakMemory, release_freed_memory
from localllm.quant.rtn import quantize_fp8, quantize_groups
from localllm.quant.sensitivity import SENSITIVITY_WINDOWS, fp8_sensitivity
from localllm.quant.weights import open_weights


@dataclass
class LayerRun:
    original_nll: torch.Tensor  # [E, L - 1]
    original_top1: torch.Tensor  # [E, L - 1]
    out_dtype: torch.dtype
    num_params: int
    source_bytes: int
    peak_memory: int | None
    largest_layer: int
    num_layers: int
    kept: tuple[str, ...] = ()  # FP8: engine linears left in 16 bits (quant.sensitivity), most sensitive first
    num_linears: int = 0  # decoder linears as the engine fuses them
    kept_activations: tuple[str, ...] = ()  # FP8: engine linears with 16-bit activations, most sensitive first


def _source_bytes(checkpoint) -> int:
    if checkpoint.format == "gguf":
        return os.path.getsize(checkpoint.path)
    return sum(os.path.getsize(os.path.join(checkpoint.path, f)) for f in os.listdir(checkpoint.path)
               if f.endswith(".safetensors"))


def _quantize_layer(layer, runner: LayerRunner, calib: torch.Tensor, options, device,
                    keep: frozenset[str] = frozenset()) -> tuple[dict, torch.Tensor]:
    """Quantize one loaded layer; returns (engine linear name -> result, None for a linear named
    in keep: it stays 16-bit; the calibration stream for the next layer)."""
    method, bits, group = options.method, options.resolved_bits, options.group_size
    linears = {name: layer.get_submodule(name) for name in LINEARS if name not in keep}
    kept = dict.fromkeys(keep)
    if method == "fp8" and options.fp8_algorithm == "rtn":
        return {**kept, **{name: quantize_fp8(m.weight.data) for name, m in linears.items()}}, calib
    if method == "fp8" and options.fp8_algorithm == "mse":
        scales = {name: mse_scales(m.weight.data) for name, m in linears.items()}
        return {**kept, **{name: (quantize_fp8_rows(m.weight.data, scales[name]), scales[name])
                           for name, m in linears.items()}}, calib
    if method == "rtn":
        return {name: quantize_groups(m.weight.data, bits, group, options.resolved_sym) for name, m in linears.items()}, calib
    if method == "awq":
        observer = InputObserver(layer, hessian=False, keep_rows=options.search_tokens)
        observer.plan(calib.shape[0], runner.batch_size, runner.seq_len)
        try:
            next_calib = runner.forward(layer, calib)  # NOTE: AutoAWQ feeds the next layer the float outputs
        finally:
            observer.close()
        inputs = {name: observer.sample(name) for name in LINEARS}
        means = {name: observer.mean_abs(name) for name in LINEARS}
        del observer
        return awq_layer(layer, inputs, means, group), next_calib
    observer = InputObserver(layer, hessian=True, keep_rows=0)
    try:
        runner.forward(layer, calib)
    finally:
        observer.close()
    results = dict(kept)
    for name, module in linears.items():
        if method == "fp8":
            q, scales = gptq_fp8(module.weight.data, observer.hessian_of(name), damp_percent=options.damp_percent)
            module.weight.data.copy_((q.float() * scales).to(module.weight.dtype))
            results[name] = (q, scales)
            continue
        gq = gptq_quantize(module.weight.data, observer.hessian_of(name), bits, group, options.resolved_sym,
                           options.act_order, options.damp_percent)
        module.weight.data.copy_(gq.dequantize().to(module.weight.dtype))
        results[name] = gq
    del observer
    return results, runner.forward(layer, calib)  # GPTQ: the next layer sees the quantized layer's outputs


@torch.no_grad()
def run_layers(checkpoint, calibration, options, device: torch.device, writer,
               on_layer: Callable[[int, int], None] | None = None) -> LayerRun:
    config = checkpoint.hf_config
    source = open_weights(checkpoint)
    out_dtype = torch.float16 if FORMAT_OF_METHOD[options.method] != "fp8" else torch.bfloat16
    embed_weight = source.get("model.embed_tokens.weight")
    if embed_weight.dtype in (torch.float16, torch.bfloat16):
        out_dtype = embed_weight.dtype
    num_params = embed_weight.numel()
    num_layers = config.num_hidden_layers
    largest = 0
    with PeakMemory(device) as peak:
        writer.add({"model.embed_tokens.weight": embed_weight.to(out_dtype)})
        table = embed_weight.float().to(device)
        del embed_weight
        calibrated = options.calibrated
        calib = F.embedding(calibration.samples.to(device), table) if calibrated else None
        heldout = F.embedding(calibration.heldout.to(device), table)
        runner = LayerRunner(config, source, device, options.seq_len, options.batch_windows)
        num_kept = options.fp8_keep_count(num_layers * len(LINEARS))
        num_kept_activations = options.fp8_keep_activations_count(num_layers * len(LINEARS))
        kept, kept_activations = ((), ())
        if num_kept or num_kept_activations:
            kept, kept_activations = _most_sensitive(config, source, runner, calibration, options, num_kept,
                                                     num_kept_activations, table)
        del table
        for i in range(num_layers):
            layer = runner.load(i)
            layer_params = sum(p.numel() for name, p in layer.named_parameters())
            num_params += layer_params
            largest = max(largest, 4 * layer_params)
            heldout = runner.forward(layer, heldout)
            keep = frozenset(n[len(layer_prefix(i)):] for n in kept if n.startswith(layer_prefix(i)))
            results, calib = _quantize_layer(layer, runner, calib, options, device, keep)
            writer.add(export_layer(i, layer, results, FORMAT_OF_METHOD[options.method], out_dtype))
            del results, layer
            release_freed_memory()
            if on_layer is not None:
                on_layer(i + 1, num_layers)
        del calib
        norm = source.get("model.norm.weight")
        writer.add({"model.norm.weight": norm.to(out_dtype)})
        tied = _tied(config, source)
        head = source.get("model.embed_tokens.weight" if tied else "lm_head.weight")
        if not tied:
            writer.add({"lm_head.weight": head.to(out_dtype)})
            num_params += head.numel()
        num_params += norm.numel()
        nlls, tops = [], []
        norm, head = norm.float().to(device), head.float().to(device)
        for w, window in enumerate(calibration.heldout):
            hidden = reference.rms_norm(heldout[w], norm, config.rms_norm_eps)
            nll, top = nll_and_top1(hidden @ head.t(), window)
            nlls.append(nll)
            tops.append(top)
        peak_bytes = peak.peak_bytes()
    return LayerRun(torch.stack(nlls), torch.stack(tops), out_dtype, num_params, _source_bytes(checkpoint),
                    peak_bytes, largest, num_layers, tuple(kept), num_layers * len(LINEARS), tuple(kept_activations))


def _tied(config, source) -> bool:
    return bool(getattr(config, "tie_word_embeddings", False)) or "lm_head.weight" not in source.names()


def _most_sensitive(config, source, runner: LayerRunner, calibration, options, num_kept: int,
                    num_kept_activations: int, table: torch.Tensor) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """FP8: (the num_kept engine linears whose rounding costs the calibration loss most, then the
    num_kept_activations others whose input rounding costs it most), by one quant.sensitivity pass,
    each most sensitive first."""
    device = table.device
    norm = source.get("model.norm.weight").float().to(device)
    head = table if _tied(config, source) else source.get("lm_head.weight").float().to(device)
    windows = calibration.samples[:SENSITIVITY_WINDOWS]
    ranked = fp8_sensitivity(runner, windows, table, norm, head, config.rms_norm_eps, config.num_hidden_layers,
                             round_inputs=not options.fp8_weight_only)
    kept = ranked[:num_kept]
    by_inputs = sorted(ranked[num_kept:], key=lambda s: -s.activation_score)
    return tuple(s.name for s in kept), tuple(s.name for s in by_inputs[:num_kept_activations])
