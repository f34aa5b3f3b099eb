"""Writing a quantized Hugging Face directory without ever leaving half of one behind.

Everything goes into a hidden staging directory beside the output (same filesystem); publish()
renames it into place as the last step, and abort() (or any exception inside `with`) deletes it.
Tensors are flushed to a shard whenever the buffer passes max_shard_bytes, so the writer holds at
most one shard's worth of (already quantized) tensors.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import torch

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class OutputDirError(ValueError):
    pass


def check_output_dir(out_dir: str) -> None:
    """The output must be new or an empty directory: we never mix files into an existing model."""
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise OutputDirError(f"output {out_dir!r} already exists and is not an empty directory")
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise OutputDirError(f"cannot create {out_dir!r}: {parent!r} is not a directory")


class CheckpointWriter:
    def __init__(self, out_dir: str, max_shard_bytes: int = 512 << 20):
        check_output_dir(out_dir)
        self.out_dir = os.path.abspath(out_dir)
        self.staging = os.path.join(os.path.dirname(self.out_dir),
                                    f".{os.path.basename(self.out_dir)}.partial-{uuid.uuid4().hex[:8]}")
        os.makedirs(self.staging)
        self.max_shard_bytes = max_shard_bytes
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._shards: list[tuple[str, list[str]]] = []  # (temporary file name, tensor names)
        self.tensor_bytes = 0

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            if name in self._buffer or any(name in names for _, names in self._shards):
                raise ValueError(f"tensor {name!r} written twice")
            tensor = tensor.detach().to("cpu").contiguous()
            if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
                tensor = tensor.clone()  # NOTE: a slice of a fused tensor: safetensors refuses shared storage
            self._buffer[name] = tensor
            nbytes = tensor.numel() * tensor.element_size()
            self._buffer_bytes += nbytes
            self.tensor_bytes += nbytes
        if self._buffer_bytes >= self.max_shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        from safetensors.torch import save_file

        name = f"shard-{len(self._shards):05d}.tmp"
        path = os.path.join(self.staging, name)
        save_file(self._buffer, path, metadata={"format": "pt"})
        os.chmod(path, 0o666 & ~_umask())  # NOTE: safetensors creates 0600 files; give them the usual mode
        self._shards.append((name, list(self._buffer)))
        self._buffer, self._buffer_bytes = {}, 0

    def finish(self, config: dict, tokenizer=None, tokenizer_dir: str | None = None,
               generation_config: dict | None = None) -> None:
        """Name the shards, write the index, config.json, tokenizer and generation config."""
        self.flush()
        total = len(self._shards)
        if total == 1:
            os.replace(os.path.join(self.staging, self._shards[0][0]), os.path.join(self.staging, "model.safetensors"))
        else:
            weight_map = {}
            for i, (tmp, names) in enumerate(self._shards):
                final = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
                os.replace(os.path.join(self.staging, tmp), os.path.join(self.staging, final))
                weight_map.update({n: final for n in names})
            index = {"metadata": {"total_size": self.tensor_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            self._write_json("model.safetensors.index.json", index)
        self._write_json("config.json", config)
        if generation_config:
            self._write_json("generation_config.json", generation_config)
        copied = False
        if tokenizer_dir is not None:
            for name in _TOKENIZER_FILES:
                path = os.path.join(tokenizer_dir, name)
                if os.path.isfile(path):
                    shutil.copy2(path, os.path.join(self.staging, name))
                    copied = True
        if not copied and tokenizer is not None:
            tokenizer.save_pretrained(self.staging)

    def _write_json(self, name: str, data: dict) -> None:
        with open(os.path.join(self.staging, name), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    def publish(self) -> str:
        """Move the finished directory into place (the only step that touches out_dir)."""
        check_output_dir(self.out_dir)
        if os.path.isdir(self.out_dir):
            os.rmdir(self.out_dir)  # empty, checked above
        os.replace(self.staging, self.out_dir)
        return self.out_dir

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
