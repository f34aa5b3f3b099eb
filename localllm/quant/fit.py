"""The memory planner: which precision of a model fits this machine, with how much KV cache.

    plan = plan_fit(hf_config, free_bytes, target_context, {"bf16", "awq"}, "cuda", name="llama3-8b")
    plan.summary()  # "llama3-8b: AWQ int4, 5.7 GB weights + 2.1 GB KV for 16k tokens on 12 GB"

`hf_config` is a config.json dict or a transformers PretrainedConfig. The byte counts mirror how
the engine holds weights: on CUDA float weights are bf16 and GGUF files are dequantized to bf16;
on the CPU float weights are float32 and a 4-bit GGUF runs as int4 groups of 32. No torch at
import: probe_memory() imports it only to read a GPU's free memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

PRECISIONS = ("bf16", "fp8", "awq", "gptq", "gguf")
LABELS = {"bf16": "BF16", "fp8": "FP8", "awq": "AWQ int4", "gptq": "GPTQ int4", "gguf": "GGUF Q4_K_M"}
# NOTE: quality first on a GPU. On the CPU a 4-bit GGUF comes first: it is the CPU fast path
# (int4 kernels), and float weights would run as float32 there.
PREFERENCE = {
    "cuda": ("bf16", "fp8", "awq", "gptq", "gguf"),
    "cpu": ("gguf", "bf16", "fp8", "awq", "gptq"),
}
INT4_GROUP_SIZE = 128  # AWQ / GPTQ checkpoints on the Hub
CPU_INT4_GROUP_SIZE = 32  # localllm.layers.int4_cpu_linear.GROUP_SIZE
MIN_CONTEXT = 2048  # below this a model is not worth running
PLANNED_BATCH_TOKENS = 2048  # activations are planned for prefill chunks of this many tokens
DEFAULT_UTILIZATION = 0.90  # as CacheConfig.gpu_memory_utilization
# FP8 from `localllm quantize`: the share of decoder linears (fused as the engine fuses them)
# kept in 16 bits unless --fp8-keep says how many (rounded up). SmolLM2-135M, 24 held-out
# windows: every linear W8A8 +1.28%, 15 of 120 kept +0.92%, and with 30 more at 16-bit
# activations (quantize.DEFAULT_FP8_KEEP_ACTIVATIONS_FRACTION) +0.53% / +0.77% (README,
# Quantization on the CPU). Here because it sets what the planner counts for such a file.
DEFAULT_FP8_KEEP_FRACTION = 0.125


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that decide its memory."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False
    max_context: int = 4096
    num_experts: int = 1
    attention_bias: bool = False

    @classmethod
    def from_config(cls, hf_config: Mapping[str, Any] | Any) -> "ModelShape":
        get = hf_config.get if isinstance(hf_config, Mapping) else lambda k, d=None: getattr(hf_config, k, d)
        text = get("text_config")  # multimodal wrappers keep the decoder's numbers here
        if text:
            return cls.from_config(text)
        try:
            hidden = int(get("hidden_size"))
            num_heads = int(get("num_attention_heads"))
            layers = int(get("num_hidden_layers"))
            vocab = int(get("vocab_size"))
        except (TypeError, ValueError):
            raise ValueError(
                "config lacks hidden_size, num_attention_heads, num_hidden_layers or vocab_size"
            ) from None
        experts = int(get("num_local_experts") or get("num_experts") or 1)
        inter = int(get("moe_intermediate_size") if experts > 1 and get("moe_intermediate_size") else
                    get("intermediate_size") or 4 * hidden)
        model_type = str(get("model_type") or "")
        return cls(
            num_layers=layers,
            hidden_size=hidden,
            intermediate_size=inter,
            num_heads=num_heads,
            num_kv_heads=int(get("num_key_value_heads") or num_heads),
            head_dim=int(get("head_dim") or hidden // num_heads),
            vocab_size=vocab,
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
            max_context=int(get("max_position_embeddings") or 4096),
            num_experts=experts,
            attention_bias=bool(get("attention_bias", False)) or model_type == "qwen2",
        )

    @property
    def embedding_parameters(self) -> int:
        """Token embedding plus the LM head when it is a separate matrix."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def layer_linear_parameters(self) -> list[int]:
        """Weights of one decoder layer's Linears as the engine fuses them (qkv, o, gate_up,
        down; a mixture of experts' gate_up and down count all experts, then its router)."""
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        mlp = self.hidden_size * self.intermediate_size * self.num_experts
        router = [self.hidden_size * self.num_experts] if self.num_experts > 1 else []
        return [self.hidden_size * (q + 2 * kv), q * self.hidden_size, 2 * mlp, mlp] + router

    @property
    def linear_parameters(self) -> int:
        """Weights of the decoder layers' Linears: what quantization shrinks."""
        return self.num_layers * sum(self.layer_linear_parameters())

    def most_linear_parameters(self, count: int) -> int:
        """Weights of the `count` largest decoder Linears (fused as the engine fuses them)."""
        sizes = sorted(self.layer_linear_parameters() * self.num_layers, reverse=True)
        return sum(sizes[:count])

    @property
    def other_parameters(self) -> int:
        """Norms and biases: kept in the float dtype."""
        bias = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.attention_bias else 0
        return self.num_layers * (2 * self.hidden_size + bias) + self.hidden_size

    @property
    def num_parameters(self) -> int:
        return self.embedding_parameters + self.linear_parameters + self.other_parameters


@dataclass(frozen=True)
class FitOption:
    """One precision considered: its weights, and the most KV tokens that fit beside them."""

    precision: str
    weight_bytes: int
    max_context: int  # 0: not even the weights fit
    fits_target: bool


@dataclass(frozen=True)
class FitPlan:
    model: str
    device: str  # "cuda" | "cpu"
    free_bytes: int
    target_context: int  # what was asked, capped at the model's own context
    precision: str | None  # None: nothing fits with at least MIN_CONTEXT tokens
    weight_bytes: int
    kv_bytes: int
    overhead_bytes: int
    context_len: int
    options: tuple[FitOption, ...]
    label: str = ""

    @property
    def fits(self) -> bool:
        return self.precision is not None

    def summary(self) -> str:
        where = f"on {format_gb(self.free_bytes)}" + (" RAM" if self.device == "cpu" else "")
        if self.precision is None:
            if not self.options:
                return f"{self.model}: no precision to plan for {where}"
            small = min(self.options, key=lambda o: o.weight_bytes)
            return (
                f"{self.model}: does not fit {where}: the smallest, {LABELS[small.precision]}, "
                f"needs {format_gb(small.weight_bytes)} for its weights alone"
            )
        text = (
            f"{self.model}: {self.label or LABELS[self.precision]}, {format_gb(self.weight_bytes)} weights + "
            f"{format_gb(self.kv_bytes)} KV for {format_tokens(self.context_len)} tokens {where}"
        )
        if self.context_len < self.target_context:
            text += f" ({format_tokens(self.target_context)} asked)"
        return text


def weight_bytes(shape: ModelShape, precision: str, device: str = "cuda", quantized_here: bool = False) -> int:
    """Bytes the engine holds for the weights at this precision on this kind of device.
    `quantized_here`: by `localllm quantize` with its defaults, not a Hub checkpoint's."""
    float_bytes = 4 if device == "cpu" else 2
    dense = shape.embedding_parameters + shape.other_parameters
    linear = shape.linear_parameters
    if precision == "bf16":
        return (dense + linear) * float_bytes
    if precision == "fp8":  # one byte a weight, one float scale per output channel (negligible)
        if quantized_here:
            # NOTE: which linears stay 16-bit is known only after calibration; counting the
            # largest ones keeps the plan from ever falling short.
            kept = math.ceil(shape.num_layers * len(shape.layer_linear_parameters()) * DEFAULT_FP8_KEEP_FRACTION)
            return dense * float_bytes + linear + shape.most_linear_parameters(kept) * (float_bytes - 1)
        return dense * float_bytes + linear
    if precision in ("awq", "gptq"):  # 4-bit weights + fp16 scale and 4-bit zero per group
        return dense * float_bytes + int(linear * (0.5 + 2.5 / INT4_GROUP_SIZE))
    if precision == "gguf":
        if device == "cpu":  # int4 groups of 32 with a bf16 scale and zero each
            return dense * float_bytes + int(linear * (0.5 + 4 / CPU_INT4_GROUP_SIZE))
        return (dense + linear) * float_bytes  # NOTE: dequantized at load on a GPU
    raise ValueError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")


def kv_bytes_per_token(shape: ModelShape, device: str = "cuda") -> int:
    """K and V of every layer for one token, in the engine's activation dtype."""
    return 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * (4 if device == "cpu" else 2)


def overhead_bytes(shape: ModelShape, device: str = "cuda") -> int:
    """Activations of one prefill chunk (about eight hidden-size buffers and the MLP's gate/up
    output, in the activation dtype) plus 1 GiB for the runtime: CUDA context, allocator slack,
    sampler."""
    per_token = 8 * shape.hidden_size + 2 * shape.intermediate_size
    return PLANNED_BATCH_TOKENS * per_token * (4 if device == "cpu" else 2) + (1 << 30)


def plan_fit(
    hf_config: Mapping[str, Any] | Any,
    free_bytes: int,
    target_context: int,
    available_precisions: Iterable[str],
    device: str = "cuda",
    *,
    name: str = "model",
    utilization: float = DEFAULT_UTILIZATION,
    quantized_here: Iterable[str] = (),
) -> FitPlan:
    """Pick the first precision in PREFERENCE[device] (among those available) whose weights and
    KV cache for `target_context` tokens fit in `utilization` x `free_bytes`. When none does,
    take the one that leaves the most room (the smallest) at a shorter context, if at least
    MIN_CONTEXT tokens fit; else the plan has no precision. `quantized_here`: the precisions
    that would be made by `localllm quantize` rather than pulled (see weight_bytes)."""
    kind = "cpu" if device == "cpu" else "cuda"
    if free_bytes < 0 or target_context < 1:
        raise ValueError(f"free_bytes must be >= 0 and target_context >= 1, got {free_bytes}, {target_context}")
    shape = ModelShape.from_config(hf_config)
    available = set(available_precisions)
    unknown = available - set(PRECISIONS)
    if unknown:
        raise ValueError(f"unknown precision(s) {sorted(unknown)} (known: {', '.join(PRECISIONS)})")
    target = min(target_context, shape.max_context)
    budget = int(free_bytes * utilization)
    per_token = kv_bytes_per_token(shape, kind)
    overhead = overhead_bytes(shape, kind)
    quantized_here = set(quantized_here)
    options = []
    for precision in (p for p in PREFERENCE[kind] if p in available):
        weights = weight_bytes(shape, precision, kind, precision in quantized_here)
        room = budget - weights - overhead
        max_context = min(max(room, 0) // per_token, shape.max_context)
        options.append(FitOption(precision, weights, int(max_context), max_context >= target))
    chosen = next((o for o in options if o.fits_target), None)
    context = target
    if chosen is None:
        roomiest = max(options, key=lambda o: o.max_context, default=None)
        if roomiest is not None and roomiest.max_context >= MIN_CONTEXT:
            chosen = roomiest
            context = roomiest.max_context // 1024 * 1024
    return FitPlan(
        model=name,
        device=kind,
        free_bytes=free_bytes,
        target_context=target,
        precision=chosen.precision if chosen else None,
        weight_bytes=chosen.weight_bytes if chosen else 0,
        kv_bytes=context * per_token if chosen else 0,
        overhead_bytes=overhead,
        context_len=context if chosen else 0,
        options=tuple(options),
    )


# ---------------------------------------------------------------- this machine


@dataclass(frozen=True)
class DeviceMemory:
    device: str  # "cuda:0" or "cpu"
    name: str  # the GPU's name, or "CPU"
    total_bytes: int
    free_bytes: int
    supports_fp8: bool = False  # FP8 matmuls (compute capability >= 8.9)

    @property
    def kind(self) -> str:
        return "cpu" if self.device == "cpu" else "cuda"


def runnable_precisions(memory: DeviceMemory) -> frozenset[str]:
    """Precisions the engine runs on this device. NOTE: the CPU path has no AWQ/GPTQ/FP8 kernels;
    FP8 saves memory only where the card has FP8 matmuls; a GGUF on a GPU runs dequantized to
    bf16, so it is planned at bf16's cost and comes last in PREFERENCE["cuda"]."""
    if memory.kind == "cpu":
        return frozenset({"bf16", "gguf"})
    return frozenset({"bf16", "awq", "gptq", "gguf"} | ({"fp8"} if memory.supports_fp8 else set()))


def ram_bytes() -> tuple[int, int]:
    """(total, available) system memory; available is what a new process can take."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.count(":") == 1}
        return fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0))
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * page
        except (ValueError, OSError):
            free = total // 2
        return total, free
    except (ValueError, OSError, AttributeError):
        return 0, 0


def probe_memory(device: str = "auto") -> DeviceMemory:
    """The device a model would run on and its free memory: torch.cuda.mem_get_info on a GPU,
    available RAM otherwise."""
    if device != "cpu":
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None and torch.cuda.is_available():
            index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
            free, total = torch.cuda.mem_get_info(index)
            major, minor = torch.cuda.get_device_capability(index)
            return DeviceMemory(
                device=f"cuda:{index}",
                name=torch.cuda.get_device_name(index),
                total_bytes=int(total),
                free_bytes=int(free),
                supports_fp8=(major, minor) >= (8, 9),
            )
        if device.startswith("cuda"):
            raise RuntimeError(f"device {device!r} was asked for, but torch sees no CUDA device")
    total, free = ram_bytes()
    return DeviceMemory(device="cpu", name="CPU", total_bytes=total, free_bytes=free)


# ---------------------------------------------------------------- formatting


def format_gb(num_bytes: int) -> str:
    """Decimal gigabytes with one decimal, as model cards and Ollama print them: "5.7 GB", "12 GB"."""
    value = num_bytes / 1e9
    text = f"{value:.1f}"
    return (text[:-2] if text.endswith(".0") else text) + " GB"


def format_tokens(num_tokens: int) -> str:
    """16384 -> "16k"; counts that are not a multiple of 1024 print as they are."""
    return f"{num_tokens // 1024}k" if num_tokens >= 1024 and num_tokens % 1024 == 0 else str(num_tokens)


__all__ = [
    "DeviceMemory", "FitOption", "FitPlan", "LABELS", "ModelShape", "PRECISIONS", "PREFERENCE", "format_gb",
    "format_tokens", "kv_bytes_per_token", "overhead_bytes", "plan_fit", "probe_memory", "ram_bytes",
    "runnable_precisions", "weight_bytes",
]
