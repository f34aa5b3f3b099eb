"""What the server says about its model: names, context length, size, format, capabilities.

Built once at start from the loaded engine (or given directly by tests). Ollama's /api/tags,
/api/show and /api/ps and OpenAI's /v1/models all read from here.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

from localllm.server.fim import FimFormat, detect_fim


@dataclass(frozen=True)
class ModelInfo:
    name: str  # the served name: what /v1/models lists and requests must name
    max_model_len: int
    family: str = "llama"  # HF model_type: llama, qwen2, qwen3, ...
    format: str = "gguf"  # gguf | safetensors
    parameter_count: int = 0
    quantization_level: str = "F32"  # what the file stores (Q4_1, BF16, AWQ, ...)
    running_as: str = "float32"  # what the weights run as (int4, bfloat16, ...)
    file_size: int = 0  # bytes on disk
    memory_size: int = 0  # bytes in memory: weights + KV cache
    on_gpu: bool = False
    digest: str = ""
    modified_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    chat_template: str | None = None
    fim: FimFormat | None = None
    aliases: tuple[str, ...] = ()  # more names that requests may use
    load_seconds: float = 0.0  # how long loading the model took at start-up

    @property
    def ollama_name(self) -> str:
        return self.name if ":" in self.name.rsplit("/", 1)[-1] else f"{self.name}:latest"

    def matches(self, requested: str | None) -> bool:
        """Whether a request's `model` names this model (Ollama clients add ':latest')."""
        if not requested:
            return False
        names = {self.name, self.ollama_name, *self.aliases}
        names |= {f"{a}:latest" for a in self.aliases}
        return requested in names

    @property
    def parameter_size(self) -> str:
        n = self.parameter_count
        for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= scale:
                return f"{n / scale:.1f}{unit}".replace(".0" + unit, unit)
        return str(n)

    @property
    def capabilities(self) -> list[str]:
        caps = ["completion"]
        if self.chat_template:
            caps.append("tools")  # NOTE: tool calls are parsed for every chat model (tool_calls.py)
        if self.fim is not None:
            caps.append("insert")
        return caps

    def ollama_details(self) -> dict:
        return {
            "parent_model": "",
            "format": self.format,
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


def parameter_count(hf_config) -> int:
    """Weights of a Llama-family decoder, counted from its config (int4-packed tensors in memory
    no longer show their logical size)."""
    c = hf_config
    hidden, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    heads = c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    attn = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * c.intermediate_size
    per_layer = attn + mlp + 2 * hidden
    embed = vocab * hidden
    lm_head = 0 if getattr(c, "tie_word_embeddings", False) else vocab * hidden
    return embed + layers * per_layer + hidden + lm_head


def _weight_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    names = sorted(n for n in os.listdir(path) if n.endswith((".safetensors", ".gguf")))
    return [os.path.join(path, n) for n in names]


def describe_model(llm, name: str, aliases: tuple[str, ...] = ()) -> ModelInfo:
    """ModelInfo of a loaded AsyncLLM."""
    loaded = llm.loaded_model()
    files = _weight_files(loaded.path)
    stats = [os.stat(f) for f in files]
    # NOTE: the digest identifies the files (path, sizes, times), it is not a content hash:
    # hashing many GB at start-up would cost minutes.
    ident = "\n".join(f"{os.path.abspath(f)}:{s.st_size}:{s.st_mtime_ns}" for f, s in zip(files, stats))
    qconfig = getattr(loaded.hf_config, "quantization_config", None) or {}
    if not isinstance(qconfig, dict):
        qconfig = qconfig.to_dict() if hasattr(qconfig, "to_dict") else {}
    stored = loaded.weight_quantization or str(qconfig.get("quant_method", "")).upper() or loaded.dtype.upper()
    return ModelInfo(
        name=name,
        aliases=tuple(a for a in aliases if a != name),
        max_model_len=llm.max_model_len,
        family=getattr(loaded.hf_config, "model_type", "llama"),
        format=loaded.format,
        parameter_count=parameter_count(loaded.hf_config),
        quantization_level=stored,
        running_as=loaded.quantization or loaded.dtype,
        file_size=sum(s.st_size for s in stats),
        memory_size=loaded.weights_bytes + loaded.kv_cache_bytes,
        on_gpu=loaded.device_type == "cuda",
        digest=hashlib.sha256(ident.encode()).hexdigest(),
        modified_at=datetime.fromtimestamp(max((s.st_mtime for s in stats), default=0), timezone.utc),
        chat_template=llm.chat_template,
        fim=detect_fim(llm.tokenizer),
        load_seconds=loaded.load_seconds,
    )
