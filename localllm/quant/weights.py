"""Random access to a checkpoint's float weights by Hugging Face name, one tensor at a time.

Quantizing reads one decoder layer's tensors at a time, in layer order, which a file-order
stream cannot give. NOTE: reads go through plain file reads, not a memory map: pages of a
mapped file count as the process's resident memory until unmapped, so a map would make the
peak grow with every layer read. (GGUF files are read through GGUFFile's map: a GGUF source's
peak includes the file pages touched.)
"""

from __future__ import annotations

import json
import struct

import torch

from localllm.errors import ModelLoadError

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class WeightSource:
    """names(): every tensor name; get(name) -> the tensor (float tensors as stored)."""

    def names(self) -> list[str]:
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError


class SafetensorsSource(WeightSource):
    def __init__(self, files: list[str]):
        self._index: dict[str, tuple[str, int, str, list[int], int]] = {}
        for path in files:
            with open(path, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(header_len))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                start, end = info["data_offsets"]
                self._index[name] = (path, 8 + header_len + start, info["dtype"], info["shape"], end - start)

    def names(self) -> list[str]:
        return list(self._index)

    def get(self, name: str) -> torch.Tensor:
        path, offset, dtype, shape, nbytes = self._index[name]
        if dtype not in _DTYPES:
            raise ModelLoadError(path, f"tensor {name!r} has dtype {dtype}, which localllm does not read")
        buffer = bytearray(nbytes)
        with open(path, "rb") as f:
            f.seek(offset)
            if f.readinto(buffer) != nbytes:
                raise ModelLoadError(path, f"truncated safetensors file: tensor {name!r} runs past the end")
        if nbytes == 0:
            return torch.empty(shape, dtype=_DTYPES[dtype])
        return torch.frombuffer(buffer, dtype=_DTYPES[dtype]).reshape(shape)


class GGUFSource(WeightSource):
    """A GGUF file's tensors under their HF names, dequantized to float32, Q/K rows un-permuted."""

    def __init__(self, path: str, hf_config):
        from localllm.models.gguf_file import GGUFFile
        from localllm.models.gguf_loader import hf_name

        self._gguf = GGUFFile(path)
        self._permute = self._gguf.architecture == "llama"
        self._heads = (hf_config.num_attention_heads, hf_config.num_key_value_heads)
        self._names = {}
        for gguf_name in self._gguf.tensors:
            target = hf_name(gguf_name)
            if target is not None:
                self._names[target] = gguf_name

    def names(self) -> list[str]:
        return list(self._names)

    def get(self, name: str) -> torch.Tensor:
        from localllm.models.gguf_loader import unpermute

        gguf_name = self._names[name]
        tensor = self._gguf.tensor(gguf_name)
        if self._permute and ".attn_q." in gguf_name:
            tensor = unpermute(tensor, self._heads[0])
        elif self._permute and ".attn_k." in gguf_name:
            tensor = unpermute(tensor, self._heads[1])
        return tensor.clone()


def open_weights(checkpoint) -> WeightSource:
    """The random-access source for a loaded Checkpoint (safetensors directory or GGUF file)."""
    if checkpoint.format == "gguf":
        return GGUFSource(checkpoint.path, checkpoint.hf_config)
    if checkpoint.format == "safetensors":
        from localllm.models.safetensors_loader import _safetensors_files

        return SafetensorsSource(_safetensors_files(checkpoint.path))
    raise ModelLoadError(checkpoint.path, f"cannot quantize from a {checkpoint.format!r} checkpoint")
