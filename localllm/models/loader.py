"""load_checkpoint(path) -> Checkpoint: config, tokenizer, chat template, generation defaults and a
lazy weight stream, from a local HF directory (safetensors) or a single .gguf file.

Never unpickles: PyTorch .bin/.pt weights are refused. Every problem with the files surfaces as
ModelLoadError / UnsupportedModelError naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from localllm.errors import ModelLoadError

WeightStream = Iterator[tuple[str, torch.Tensor]]


class LazyWeights:
    """Re-iterable stream of (hf_name, tensor): each iteration reopens the files and yields one
    tensor at a time, so peak memory is the model plus one tensor. Also callable: weights()."""

    def __init__(self, open_stream: Callable[[], WeightStream], num_tensors: int):
        self._open_stream = open_stream
        self.num_tensors = num_tensors

    def __iter__(self) -> WeightStream:
        return self._open_stream()

    def __call__(self) -> WeightStream:
        return self._open_stream()

    def __len__(self) -> int:
        return self.num_tensors


@dataclass
class Checkpoint:
    path: str
    format: str  # "safetensors" | "gguf"
    hf_config: Any  # transformers PretrainedConfig (LlamaConfig, Qwen2Config, ...)
    tokenizer: Any  # transformers fast tokenizer
    chat_template: str | None
    generation_config: dict
    eos_token_ids: set[int]
    weights: LazyWeights
    max_model_len: int
    notes: list[str] = field(default_factory=list)  # things the user may want to know (clamps)
    # The storage type of the decoder's linear weights in the file ("Q4_1", "Q8_0", ...), for
    # GGUF; None for float checkpoints.
    weight_quantization: str | None = None

    @property
    def architecture(self) -> str:
        return self.hf_config.architectures[0]


def load_checkpoint(path: str) -> Checkpoint:
    """A local model directory (config.json + *.safetensors + tokenizer) or a .gguf file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(path, "no such file or directory")
    if os.path.isdir(path):
        from localllm.models.safetensors_loader import load_hf_dir

        return load_hf_dir(path)
    if path.endswith(".gguf"):
        from localllm.models.gguf_loader import load_gguf

        return load_gguf(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        from localllm.models.gguf_loader import load_gguf

        return load_gguf(path)
    raise ModelLoadError(path, "not a model: expected a directory with config.json and safetensors, or a .gguf file")


def eos_token_ids(tokenizer, generation_config: dict, extra: list[int | None] = ()) -> set[int]:
    """The tokenizer's eos plus generation_config's eos_token_id (an int or a list)."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    eos = generation_config.get("eos_token_id")
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    ids.update(int(e) for e in extra if e is not None)
    return ids


def clamp_to_window(hf_config, max_model_len: int, notes: list[str]) -> int:
    """Sliding-window models run only within their window (localllm attends to every position)."""
    from localllm.models.llama import sliding_window

    window = sliding_window(hf_config)
    if window is not None and max_model_len > window:
        notes.append(
            f"max_model_len clamped from {max_model_len} to the sliding window ({window}): "
            "sliding-window attention is not implemented"
        )
        return window
    return max_model_len
