"""A local Hugging Face model directory: config.json, *.safetensors (single or sharded with an
index), tokenizer files, generation_config.json. Shard headers are checked at load time, so a
truncated download fails here, before any model is built."""

from __future__ import annotations

import glob
import json
import os
import struct

from localllm.errors import ModelLoadError, UnsupportedModelError
from localllm.models.loader import Checkpoint, LazyWeights, clamp_to_window, eos_token_ids
from localllm.models.registry import supported_architectures

_PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "consolidated*.pth")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ModelLoadError(path, f"invalid JSON: {e}") from None
    except OSError as e:
        raise ModelLoadError(path, f"cannot read: {e}") from None


def _safetensors_files(model_dir: str) -> list[str]:
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(index_path, "no weight_map in the safetensors index")
        files = [os.path.join(model_dir, name) for name in sorted(set(weight_map.values()))]
        for file in files:
            if not os.path.isfile(file):
                raise ModelLoadError(file, "missing: the safetensors index lists this shard")
        return files
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if files:
        return files
    pickles = [p for pattern in _PICKLE_PATTERNS for p in glob.glob(os.path.join(model_dir, pattern))]
    if pickles:
        raise ModelLoadError(
            pickles[0],
            "PyTorch pickle weights are not loaded (unpickling runs arbitrary code): "
            "localllm loads safetensors or GGUF only",
        )
    raise ModelLoadError(model_dir, "no weights found (expected *.safetensors)")


def check_safetensors_file(path: str) -> int:
    """Validate a shard's header against its size; return its tensor count."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelLoadError(path, "truncated safetensors file (shorter than its 8-byte header length)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise ModelLoadError(path, f"truncated safetensors file: header of {header_len} bytes, file of {size}")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ModelLoadError(path, "corrupt safetensors file: its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ModelLoadError(path, "corrupt safetensors file: its header is not a JSON object")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    try:
        data_len = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise ModelLoadError(path, "corrupt safetensors file: a header entry has no data_offsets") from None
    if 8 + header_len + data_len > size:
        raise ModelLoadError(
            path, f"truncated safetensors file: needs {8 + header_len + data_len} bytes, has {size}"
        )
    return len(tensors)


def _stream(files: list[str]):
    from safetensors import SafetensorError, safe_open

    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except SafetensorError as e:
            raise ModelLoadError(file, f"cannot read safetensors: {e}") from None


def load_hf_dir(model_dir: str) -> Checkpoint:
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ModelLoadError(config_path, "missing: a model directory needs config.json")
    raw_config = _read_json(config_path)
    architectures = raw_config.get("architectures") or []
    supported = supported_architectures()
    if not any(a in supported for a in architectures):
        raise UnsupportedModelError(config_path, architectures[0] if architectures else "<none listed>", supported)
    files = _safetensors_files(model_dir)
    num_tensors = sum(check_safetensors_file(f) for f in files)

    from transformers import AutoConfig, AutoTokenizer

    try:
        hf_config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:  # transformers raises ValueError/OSError/KeyError for bad configs
        raise ModelLoadError(config_path, f"invalid model config: {e}") from None
    from localllm.quant.config import attach_legacy_gptq_config, scheme_of

    attach_legacy_gptq_config(hf_config, model_dir)
    scheme_of(hf_config, config_path)  # NOTE: an unsupported quantization fails here, before any weight is read
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:
        raise ModelLoadError(model_dir, f"cannot load the tokenizer: {e}") from None
    if isinstance(tokenizer, bool) or tokenizer is None:
        raise ModelLoadError(model_dir, "no tokenizer files (tokenizer.json / tokenizer_config.json)")

    gen_path = os.path.join(model_dir, "generation_config.json")
    generation_config = _read_json(gen_path) if os.path.isfile(gen_path) else {}
    notes: list[str] = []
    max_model_len = clamp_to_window(hf_config, int(hf_config.max_position_embeddings), notes)
    return Checkpoint(
        path=model_dir,
        format="safetensors",
        hf_config=hf_config,
        tokenizer=tokenizer,
        chat_template=getattr(tokenizer, "chat_template", None),
        generation_config=generation_config,
        eos_token_ids=eos_token_ids(tokenizer, generation_config),
        weights=LazyWeights(lambda: _stream(files), num_tensors),
        max_model_len=max_model_len,
        notes=notes,
    )
