"""A GGUF file's metadata and tensor table, read with struct over a memory map.

NOTE: gguf-py's GGUFReader builds a numpy view per string of the vocabulary (seconds for a 49k
vocab); this reader walks string arrays without materializing them (the tokenizer is built by
transformers from the same file) and reads everything else in a few milliseconds. Tensor data
stays on disk until tensor() dequantizes one tensor (gguf.quants.dequantize). Every read is
bounds-checked: a truncated or corrupt file gives a ModelLoadError naming it, not a deep traceback.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from math import prod

import numpy as np
import torch

from localllm.errors import ModelLoadError

# GGUF metadata value types (gguf.GGUFValueType): fixed-size scalars by struct format.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# String arrays read in full; others (tokens, merges) are only counted.
_KEEP_STRING_ARRAYS = ("general.languages", "general.tags")


@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order (ggml lists dims fastest-first)
    ggml_type: int
    offset: int  # absolute, in the file
    nbytes: int


class _Cursor:
    def __init__(self, blob: np.ndarray, path: str):
        self.blob, self.path, self.pos = blob, path, 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.blob):
            raise ModelLoadError(self.path, f"truncated GGUF file: metadata ends early (at byte {self.pos})")
        values = struct.unpack_from(fmt, self.blob, self.pos)
        self.pos += size
        return values if len(values) > 1 else values[0]

    def string(self) -> str:
        length = self.take("<Q")
        if self.pos + length > len(self.blob):
            raise ModelLoadError(self.path, f"truncated GGUF file: a string runs past the end (at byte {self.pos})")
        raw = bytes(self.blob[self.pos : self.pos + length])
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ModelLoadError(self.path, f"corrupt GGUF file: invalid UTF-8 string at byte {self.pos - length}") from None

    def value(self, value_type: int, keep_strings: bool):
        if value_type in _SCALARS:
            return self.take(_SCALARS[value_type])
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type, count = self.take("<IQ")
            if item_type in _SCALARS:
                fmt = _SCALARS[item_type]
                size = struct.calcsize(fmt) * count
                if self.pos + size > len(self.blob):
                    raise ModelLoadError(self.path, "truncated GGUF file: an array runs past the end")
                values = list(struct.unpack_from(f"<{count}{fmt[1]}", self.blob, self.pos))
                self.pos += size
                return values
            if item_type == _STRING:
                if keep_strings:
                    return [self.string() for _ in range(count)]
                for _ in range(count):
                    length = self.take("<Q")
                    self.pos += length
                if self.pos > len(self.blob):
                    raise ModelLoadError(self.path, "truncated GGUF file: a string array runs past the end")
                return count  # NOTE: only the length of a skipped string array
            raise ModelLoadError(self.path, f"corrupt GGUF file: array of value type {item_type}")
        raise ModelLoadError(self.path, f"corrupt GGUF file: unknown metadata value type {value_type}")


class GGUFFile:
    """metadata: dict (skipped string arrays hold their length); tensors: name -> GGUFTensorInfo."""

    def __init__(self, path: str):
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        self.path = path
        try:
            # NOTE: copy-on-write map: numpy views are writable, so torch.from_numpy needs no copy
            # (and warns about nothing); the file itself is never written.
            blob = np.memmap(path, mode="c", dtype=np.uint8)
        except (OSError, ValueError) as e:
            raise ModelLoadError(path, f"cannot read the file: {e}") from None
        self._blob = blob
        cur = _Cursor(blob, path)
        if len(blob) < 24 or bytes(blob[:4]) != b"GGUF":
            raise ModelLoadError(path, "not a GGUF file (no GGUF magic bytes at the start)")
        cur.pos = 4
        version, tensor_count, kv_count = cur.take("<IQQ")
        if version not in (2, 3):
            raise ModelLoadError(path, f"GGUF version {version} is not supported (only 2 and 3)")
        if kv_count > 1_000_000 or tensor_count > 1_000_000:
            raise ModelLoadError(path, "corrupt GGUF header (implausible metadata or tensor count)")
        self.metadata: dict = {}
        for _ in range(kv_count):
            key = cur.string()
            value_type = cur.take("<I")
            self.metadata[key] = cur.value(value_type, keep_strings=key in _KEEP_STRING_ARRAYS)
        entries = []
        for _ in range(tensor_count):
            name = cur.string()
            n_dims = cur.take("<I")
            if n_dims > 8:
                raise ModelLoadError(path, f"corrupt GGUF tensor table: tensor {name!r} has {n_dims} dims")
            dims = [cur.take("<Q") for _ in range(n_dims)]
            ggml_type, offset = cur.take("<IQ")
            entries.append((name, tuple(reversed(dims)), ggml_type, offset))
        alignment = int(self.metadata.get("general.alignment", 32))
        data_start = (cur.pos + alignment - 1) // alignment * alignment
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, shape, ggml_type, offset in entries:
            try:
                qtype = GGMLQuantizationType(ggml_type)
                block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise ModelLoadError(path, f"tensor {name!r} has unknown ggml type {ggml_type}") from None
            nbytes = prod(shape) // block_elems * block_bytes
            start = data_start + offset
            if start + nbytes > len(blob):
                raise ModelLoadError(
                    path, f"truncated GGUF file: tensor {name!r} needs bytes {start}..{start + nbytes}, "
                          f"the file has {len(blob)}"
                )
            self.tensors[name] = GGUFTensorInfo(name, shape, ggml_type, start, nbytes)

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ModelLoadError(self.path, "GGUF metadata has no general.architecture")
        return arch

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor dequantized to float32 (F32 data: a zero-copy view of the map)."""
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import dequantize

        from localllm.models.gguf_dequant import dequantize_blocks

        info = self.tensors[name]
        raw = self._blob[info.offset : info.offset + info.nbytes]
        qtype = GGMLQuantizationType(info.ggml_type)
        if qtype == GGMLQuantizationType.F32:
            array = raw.view(np.float32)
        elif qtype == GGMLQuantizationType.F16:
            array = raw.view(np.float16)
        elif qtype == GGMLQuantizationType.BF16:
            return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16).reshape(info.shape).float()
        else:
            fast = dequantize_blocks(torch.from_numpy(raw), info.ggml_type)
            if fast is not None:
                return fast.view(info.shape)
            block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
            rows = raw.reshape(-1, info.shape[-1] // block_elems * block_bytes)
            try:
                array = dequantize(rows, qtype)
            except NotImplementedError:
                raise ModelLoadError(self.path, f"tensor {name!r}: ggml type {qtype.name} cannot be dequantized") from None
        return torch.from_numpy(array).reshape(info.shape).float()
