"""Which linear a model builds: the dense one, or the quantized layer the checkpoint's
quantization_config asks for (quant.config.QuantScheme).

make_linear(hf_config, name, dense_cls, *args) takes the dense class's own arguments (dtype and
device last, as Linear, MergedLinear and QKVLinear all take them); the dense layer is first built
on the meta device (no memory) to read its sizes and shards. A module listed in the config's
ignore list stays dense, one named by an FP8 weight-only group gets FP8 weights with 16-bit
activations; a fused module whose parts disagree on either is refused.
finish_loading(model) converts every quantized layer's file tensors once all weights are in.
"""

from __future__ import annotations

import torch
from torch import nn

from localllm.errors import ModelLoadError
from localllm.quant.config import QuantScheme, scheme_of

# fused module -> the checkpoint modules it holds, in shard order
_PARTS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def _scheme(hf_config) -> QuantScheme | None:
    # NOTE: parsed per layer (a few dict lookups); caching it on the config would leak into to_dict().
    return scheme_of(hf_config, getattr(hf_config, "_name_or_path", None) or "config.json")


def checkpoint_names(name: str) -> list[str]:
    """The checkpoint module names a (possibly fused) module stands for."""
    prefix, _, leaf = name.rpartition(".")
    parts = _PARTS.get(leaf)
    return [f"{prefix}.{p}" if prefix else p for p in parts] if parts else [name]


def make_linear(hf_config, name: str, dense_cls: type, *args) -> nn.Module:
    scheme = _scheme(hf_config)
    if scheme is None:
        return dense_cls(*args)
    ignored = [scheme.is_ignored(n) for n in checkpoint_names(name)]
    if all(ignored):
        return dense_cls(*args)
    if any(ignored):
        raise ModelLoadError("config.json", f"{name}: the quantization config leaves only some of "
                                            f"{', '.join(checkpoint_names(name))} unquantized; they are fused")
    try:
        scheme = scheme.for_modules(checkpoint_names(name))
    except ValueError as e:
        raise ModelLoadError("config.json", f"{name}: {e}") from None
    *sizes_args, dtype, device = args
    meta = dense_cls(*sizes_args, dtype, torch.device("meta"))
    output_sizes = list(getattr(meta, "output_sizes", [meta.out_features]))
    shard_ids = meta.shard_ids() if hasattr(meta, "shard_ids") else None
    layer_args = (scheme, meta.in_features, output_sizes, shard_ids, meta.bias is not None, dtype,
                  torch.device(device))
    try:
        if scheme.is_integer:
            from localllm.layers.wna16_linear import WNA16Linear

            return WNA16Linear(*layer_args, name=name)
        from localllm.layers.fp8_linear import FP8Linear

        return FP8Linear(*layer_args, name=name)
    except ValueError as e:
        raise ModelLoadError("config.json", str(e)) from None


def finish_loading(model: nn.Module, source: str = "checkpoint") -> None:
    """Run process_weights_after_loading on every layer that has one (after load_weights)."""
    for module in model.modules():
        process = getattr(module, "process_weights_after_loading", None)
        if process is not None:
            try:
                process()
            except ValueError as e:
                raise ModelLoadError(source, str(e)) from None
