"""Engine configuration: frozen dataclasses, checked once in __post_init__."""

from __future__ import annotations

from dataclasses import dataclass

_DTYPES = ("auto", "float32", "float16", "bfloat16")
_QUANTIZATIONS = ("auto", "int4", "nf4", "int8", None)


@dataclass(frozen=True)
class ModelConfig:
    model: str  # what the user named (alias, directory or .gguf path)
    path: str  # the resolved local directory or .gguf file
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    device: str = "auto"  # auto: cuda when available, else cpu
    max_model_len: int | None = None  # None: the model's own context length
    seed: int = 0
    # None: run the weights as loaded. "int4": 4-bit groups through torch's CPU kernel.
    # "auto": int4 on the CPU when the file is already 4-bit (a Q4 GGUF), else None.
    # "nf4" / "int8": load-time quantization through bitsandbytes (the optional `bnb` extra).
    quantization: str | None = "auto"
    # False: decode steps on CUDA replay CUDA graphs captured at start (vLLM's switch name).
    enforce_eager: bool = False
    # Largest decode batch captured in a graph; bigger batches run eagerly. None: max_num_seqs.
    max_cudagraph_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.max_cudagraph_batch_size is not None and self.max_cudagraph_batch_size < 1:
            raise ValueError(f"max_cudagraph_batch_size must be >= 1, got {self.max_cudagraph_batch_size}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.quantization not in _QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {_QUANTIZATIONS}, got {self.quantization!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")


KV_CACHE_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    enable_prefix_caching: bool = True
    # An explicit number of KV blocks (tests, small machines). None: size from memory.
    num_blocks: int | None = None
    # Fraction of the GPU's memory the engine may use (weights + activations + KV cache).
    gpu_memory_utilization: float = 0.90
    # KV cache budget on the CPU, in GiB, when num_blocks is not given.
    cpu_kv_cache_gib: float = 2.0
    # "auto": the model's dtype, except bfloat16 for a CPU model run on int4 groups (llama.cpp
    # keeps its KV cache in 16 bits too; it halves what each decode step reads); or "float32",
    # "bfloat16" (CPU float32 models only), "float16".
    kv_cache_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"kv_cache_blocks must be >= 1, got {self.num_blocks}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.cpu_kv_cache_gib <= 0:
            raise ValueError(f"cpu_kv_cache_gib must be > 0, got {self.cpu_kv_cache_gib}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048  # token budget per step (chunked prefill splits past it)
    max_model_len: int = 2048
    # Schedule and prepare the next decode step while the device runs the current one (see
    # Scheduler.schedule_ahead). None: on where the device runs apart from the host (CUDA).
    async_scheduling: bool | None = None

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig
    cache: CacheConfig
    scheduler: SchedulerConfig
