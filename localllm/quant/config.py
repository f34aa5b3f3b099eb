"""A checkpoint's `quantization_config` (config.json, or an old GPTQ repo's quantize_config.json)
-> QuantScheme, the one description the engine's layers are built from.

Supported: AWQ gemm (4-bit), GPTQ v1/v2 (2/4/8-bit, act-order), compressed-tensors
pack-quantized (W4A16/W8A16) and float-quantized (FP8, per-channel or per-tensor weight scales,
dynamic or static activation scales). Anything else is a ModelLoadError naming what it found.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace

from localllm.errors import ModelLoadError

METHODS = ("awq", "gptq", "ct-wna16", "fp8")


@dataclass(frozen=True)
class QuantScheme:
    method: str  # one of METHODS
    bits: int
    group_size: int | None  # None: one group per output row (per-channel)
    sym: bool = False
    desc_act: bool = False
    zero_offset: int = 1  # GPTQ: 1 for v1 (zeros stored minus one), 0 for v2
    static_input_scale: bool = False  # FP8 with input_scale in the file
    fp8_weight_only: bool = False  # FP8 weights, 16-bit activations (no input_activations in the file)
    ignore: tuple[str, ...] = ()  # module names (or "re:" patterns) left in 16 bits
    substring_ignore: bool = False  # AWQ's modules_to_not_convert matches substrings
    # FP8: module names (or "re:" patterns) of a second, weight-only config group: FP8 weights,
    # 16-bit activations there, per-token FP8 activations elsewhere
    fp8_activations_16bit: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown quantization method {self.method!r}")

    @property
    def is_integer(self) -> bool:
        return self.method in ("awq", "gptq", "ct-wna16")

    def group_size_for(self, in_features: int) -> int:
        return self.group_size if self.group_size else in_features

    def is_ignored(self, module_name: str) -> bool:
        return _matches(self.ignore, module_name, self.substring_ignore)

    def for_modules(self, module_names: list[str]) -> QuantScheme:
        """The scheme of one (possibly fused) layer: FP8 weight-only where its modules are named by
        the weight-only group. ValueError when the fused modules disagree."""
        weight_only = [_matches(self.fp8_activations_16bit, n) for n in module_names]
        if not any(weight_only):
            return self
        if not all(weight_only):
            raise ValueError(f"the quantization config gives 16-bit activations to only some of "
                             f"{', '.join(module_names)}; they are fused")
        return replace(self, fp8_weight_only=True, fp8_activations_16bit=())


def _matches(patterns: tuple[str, ...], module_name: str, substring: bool = False) -> bool:
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], module_name):
                return True
        elif pattern == module_name or (substring and pattern in module_name):
            return True
    return False


def raw_quantization_config(hf_config) -> dict | None:
    raw = getattr(hf_config, "quantization_config", None)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raw = raw.to_dict() if hasattr(raw, "to_dict") else dict(vars(raw))
    return raw


def attach_legacy_gptq_config(hf_config, model_dir: str) -> None:
    """Older GPTQ repos keep their settings in quantize_config.json, not in config.json."""
    path = os.path.join(model_dir, "quantize_config.json")
    if raw_quantization_config(hf_config) is None and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ModelLoadError(path, f"cannot read: {e}") from None
        raw.setdefault("quant_method", "gptq")
        hf_config.quantization_config = raw


def scheme_of(hf_config, source: str = "config.json") -> QuantScheme | None:
    """The checkpoint's scheme, or None for a 16/32-bit checkpoint."""
    raw = raw_quantization_config(hf_config)
    if raw is None:
        return None
    method = str(raw.get("quant_method", "")).lower()
    if method == "awq":
        return _awq(raw, source)
    if method == "gptq":
        return _gptq(raw, source)
    if method == "compressed-tensors":
        return _compressed_tensors(raw, source)
    raise ModelLoadError(source, f"quantization method {method or '<none>'!r} is not supported "
                                 "(supported: awq, gptq, compressed-tensors)")


def _awq(raw: dict, source: str) -> QuantScheme:
    version = str(raw.get("version", "gemm")).lower()
    if version != "gemm":
        raise ModelLoadError(source, f"AWQ version {version!r} is not supported (only 'gemm')")
    bits = int(raw.get("bits", raw.get("w_bit", 4)))
    if bits != 4:
        raise ModelLoadError(source, f"AWQ gemm with {bits} bits is not supported (only 4)")
    if not raw.get("zero_point", True):
        raise ModelLoadError(source, "AWQ without zero points is not supported")
    group = int(raw.get("group_size", raw.get("q_group_size", 128)))
    ignore = tuple(raw.get("modules_to_not_convert") or ())
    return QuantScheme("awq", 4, group if group > 0 else None, ignore=ignore, substring_ignore=True)


def _gptq(raw: dict, source: str) -> QuantScheme:
    bits = int(raw.get("bits", 4))
    if bits not in (2, 4, 8):
        raise ModelLoadError(source, f"GPTQ with {bits} bits is not supported (2, 4 or 8)")
    fmt = str(raw.get("checkpoint_format", "gptq")).lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise ModelLoadError(source, f"GPTQ checkpoint_format {fmt!r} is not supported (gptq, gptq_v2)")
    if raw.get("lm_head"):
        raise ModelLoadError(source, "a GPTQ-quantized lm_head is not supported")
    group = int(raw.get("group_size", 128))
    return QuantScheme("gptq", bits, group if group > 0 else None, sym=bool(raw.get("sym", True)),
                       desc_act=bool(raw.get("desc_act", False)), zero_offset=1 if fmt == "gptq" else 0)


def _compressed_tensors(raw: dict, source: str) -> QuantScheme:
    groups = raw.get("config_groups") or {}
    if len(groups) == 2:
        return _fp8_mixed_activations(raw, source)
    if len(groups) != 1:
        raise ModelLoadError(source, f"compressed-tensors with {len(groups)} config groups is not supported "
                                     "(one, or two FP8 groups that differ only in their activations)")
    (group,) = groups.values()
    fmt = group.get("format") or raw.get("format")
    weights = group.get("weights") or {}
    acts = group.get("input_activations")
    ignore = tuple(raw.get("ignore") or ())
    kind, bits = weights.get("type"), int(weights.get("num_bits", 0))
    strategy = weights.get("strategy")
    if fmt == "pack-quantized" and kind == "int" and acts is None and bits in (4, 8):
        if strategy not in ("group", "channel"):
            raise ModelLoadError(source, f"pack-quantized strategy {strategy!r} is not supported (group, channel)")
        if weights.get("actorder") not in (None, "static", "weight"):
            raise ModelLoadError(source, f"pack-quantized actorder {weights.get('actorder')!r} is not supported")
        size = weights.get("group_size") if strategy == "group" else None
        return QuantScheme("ct-wna16", bits, int(size) if size else None, sym=bool(weights.get("symmetric", True)),
                           ignore=ignore)
    if fmt in ("float-quantized", "naive-quantized") and kind == "float" and bits == 8:
        if strategy not in ("channel", "tensor"):
            raise ModelLoadError(source, f"FP8 weight strategy {strategy!r} is not supported (channel, tensor)")
        if acts is not None and (acts.get("type") != "float" or acts.get("strategy") not in ("token", "tensor")):
            raise ModelLoadError(source, "FP8 with non-FP8 input activations is not supported")
        static = acts is not None and not acts.get("dynamic", True)
        return QuantScheme("fp8", 8, None, sym=True, static_input_scale=static, fp8_weight_only=acts is None,
                           ignore=ignore)
    raise ModelLoadError(
        source, f"compressed-tensors format {fmt!r} with {bits}-bit {kind} weights is not supported "
                "(pack-quantized W4A16/W8A16, float-quantized FP8)")


def _fp8_mixed_activations(raw: dict, source: str) -> QuantScheme:
    """Two config groups: FP8 weights in both, per-token FP8 activations in the one targeting the
    "Linear" class, none (16-bit) in the other, which names its modules (what `localllm quantize
    -m fp8` writes for the linears whose activations it keeps)."""
    parsed = [(group, _compressed_tensors({**raw, "config_groups": {"g": group}}, source))
              for group in raw["config_groups"].values()]
    full = [(g, s) for g, s in parsed if not s.fp8_weight_only]
    weight_only = [(g, s) for g, s in parsed if s.fp8_weight_only]
    if (len(full) != 1 or len(weight_only) != 1 or full[0][1].method != "fp8"
            or list(full[0][0].get("targets") or []) != ["Linear"]
            or any(t == "Linear" for t in weight_only[0][0].get("targets") or [])):
        raise ModelLoadError(source, "compressed-tensors with two config groups is supported only as FP8 with "
                                     "per-token activations for \"Linear\" and a weight-only FP8 group naming "
                                     "its modules")
    return replace(full[0][1], fp8_activations_16bit=tuple(weight_only[0][0]["targets"]))
