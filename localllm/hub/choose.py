"""Which variant a pull fetches: the tag, --quantization, or (auto) the memory planner, and
whether it must be quantized here after pulling bf16 (local_quant.py)."""

from __future__ import annotations

from dataclasses import dataclass

from localllm.errors import LocalLLMError, ModelNotFoundError
from localllm.hub import local_quant
from localllm.hub.names import ModelRef
from localllm.hub.variants import Variant, alias_precisions, alias_variant, ref_variant


@dataclass(frozen=True)
class Choice:
    variant: Variant
    quantize: str | None = None  # quantize the (bf16) variant locally with this method


def choose(ref: ModelRef, quantization: str, context: int, memory, device: str, notes: list[str]) -> Choice:
    if ref.kind != "alias":
        if quantization != "auto" and not (ref.kind == "gguf" and quantization == "gguf"):
            raise LocalLLMError(
                f"{ref.text}: --quantization {quantization} needs an alias (a repo is pulled as it is; "
                "`localllm quantize` quantizes a local copy)"
            )
        return Choice(ref_variant(ref))
    alias = ref.alias
    if ref.tag:
        asked = "gguf" if ref.quant else ref.tag
        if quantization not in ("auto", asked):
            raise LocalLLMError(f"{ref.text}: the tag and --quantization {quantization} disagree")
        if asked in alias_precisions(alias):
            return Choice(ref_variant(ref))
        return _local(alias, asked)
    if quantization != "auto":
        if quantization in alias_precisions(alias):
            return Choice(alias_variant(alias, quantization))
        return _local(alias, quantization)
    return _plan(alias, context, memory, device, notes)


def _local(alias, method: str) -> Choice:
    """Quantize after pull, when the alias has no pre-quantized `method` variant."""
    have = ", ".join(alias_precisions(alias))
    if method not in local_quant.LOCAL_METHODS:
        raise ModelNotFoundError(f"{alias.name}:{method}", f"no {method} variant (has: {have})")
    if not local_quant.available():
        raise ModelNotFoundError(
            f"{alias.name}:{method}",
            f"no pre-quantized {method} variant (has: {have}) and this install cannot quantize locally",
        )
    return Choice(alias_variant(alias, "bf16"), quantize=method)


def _plan(alias, context: int, memory, device: str, notes: list[str]) -> Choice:
    """--quantization auto: the planner picks among pre-quantized variants first; local
    quantization only when it gives a longer context than any of them."""
    from localllm.quant.fit import LABELS, format_gb, plan_fit, probe_memory, runnable_precisions

    memory = memory or probe_memory(device)
    runnable = runnable_precisions(memory)
    ready = [p for p in alias_precisions(alias) if p in runnable]
    plan = plan_fit(alias.config, memory.free_bytes, context, ready, memory.kind, name=alias.name)
    local = [p for p in local_quant.LOCAL_METHODS if p in runnable and p not in ready]
    if local and local_quant.available():
        with_local = plan_fit(alias.config, memory.free_bytes, context, ready + local, memory.kind, name=alias.name,
                              quantized_here=local)
        if with_local.precision in local and (not plan.fits or with_local.context_len > plan.context_len):
            notes.append(f"plan: {with_local.summary()} (quantized here: no pre-quantized variant fits)")
            return Choice(alias_variant(alias, "bf16"), quantize=with_local.precision)
    notes.append(f"plan: {plan.summary()}")
    if plan.precision is not None:
        return Choice(alias_variant(alias, plan.precision))
    smallest = min(plan.options, key=lambda o: o.weight_bytes)
    notes.append(
        f"warning: {alias.name} does not fit in {format_gb(memory.free_bytes)} free on {memory.name}; "
        f"pulling the smallest variant, {LABELS[smallest.precision]}"
    )
    return Choice(alias_variant(alias, smallest.precision))
