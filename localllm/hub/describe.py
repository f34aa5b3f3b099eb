"""What `localllm show` prints about a local model: architecture, parameters, context length,
quantization, chat template and files, read from the files' headers (no weights loaded).

NOTE: a GGUF's metadata is read with localllm.models.gguf_file, which imports torch; that import
happens inside describe() for GGUF files only, never when this module is imported.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

from localllm.errors import ModelLoadError
from localllm.hub.manifest import MANIFEST


@dataclass(frozen=True)
class ModelDescription:
    path: str
    format: str  # safetensors | gguf
    architecture: str
    parameters: int | None
    parameters_estimated: bool  # True: from the config (packed quantized weights hide the count)
    context_length: int | None
    quantization: str
    chat_template: str | None
    files: tuple[tuple[str, int], ...]  # (path relative to the model directory, bytes)


def describe(path: str | os.PathLike) -> ModelDescription:
    path = Path(path)
    if path.is_dir():
        return _describe_dir(path)
    if path.suffix.lower() == ".gguf":
        return _describe_gguf(path)
    raise ModelLoadError(str(path), "not a model: expected a directory holding config.json, or a .gguf file")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(str(path), f"cannot read: {e}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(str(path), "not a JSON object")
    return data


def _describe_dir(directory: Path) -> ModelDescription:
    config = _read_json(directory / "config.json")
    files = tuple(
        (p.relative_to(directory).as_posix(), p.stat().st_size)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )
    quant = config.get("quantization_config") or {}
    quantization = _describe_quantization(quant, config)
    parameters, estimated = None, False
    if not quant:
        parameters = sum(_safetensors_elements(directory / name) for name, _ in files if name.endswith(".safetensors"))
    if not parameters:
        from localllm.quant.fit import ModelShape

        try:
            parameters, estimated = ModelShape.from_config(config).num_parameters, True
        except ValueError:
            parameters = None
    return ModelDescription(
        path=str(directory),
        format="safetensors",
        architecture=", ".join(config.get("architectures") or []) or str(config.get("model_type", "unknown")),
        parameters=parameters,
        parameters_estimated=estimated,
        context_length=config.get("max_position_embeddings"),
        quantization=quantization,
        chat_template=_chat_template(directory),
        files=files,
    )


def _describe_quantization(quant: dict, config: dict) -> str:
    if not quant:
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "unknown")
        return {"bfloat16": "none (bf16 weights)", "float16": "none (fp16 weights)",
                "float32": "none (fp32 weights)"}.get(dtype, f"none ({dtype} weights)")
    method = str(quant.get("quant_method", "unknown"))
    details = [f"{quant['bits']}-bit" if "bits" in quant else "", f"group size {quant['group_size']}" if "group_size" in quant else ""]
    if method == "compressed-tensors":
        for group in (quant.get("config_groups") or {}).values():
            weights = (group or {}).get("weights") or {}
            if weights:
                details = [f"{weights.get('type', '?')} {weights.get('num_bits', '?')}-bit weights"]
                break
    details = [d for d in details if d]
    return method + (f" ({', '.join(details)})" if details else "")


def _safetensors_elements(path: Path) -> int:
    """Element count of a safetensors file, from its header alone."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError) as e:
        raise ModelLoadError(str(path), f"cannot read the safetensors header: {e}") from None
    return sum(prod(v.get("shape", [])) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict))


def _chat_template(directory: Path) -> str | None:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("tokenizer_config.json", "chat_template.json"):
        candidate = directory / name
        if not candidate.is_file():
            continue
        template = _read_json(candidate).get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if isinstance(template, str):
            return template
    return None


def _describe_gguf(path: Path) -> ModelDescription:
    from collections import Counter

    from gguf.constants import GGMLQuantizationType

    from localllm.models.gguf_file import GGUFFile

    gguf = GGUFFile(str(path))
    md = gguf.metadata
    arch = gguf.architecture
    types = Counter(
        GGMLQuantizationType(t.ggml_type).name for n, t in gguf.tensors.items() if n.startswith("blk.") and len(t.shape) == 2
    )
    template = md.get("tokenizer.chat_template")
    context = md.get(f"{arch}.context_length")
    return ModelDescription(
        path=str(path),
        format="gguf",
        architecture=f"{arch} (GGUF)",
        parameters=sum(prod(t.shape) for t in gguf.tensors.values()),
        parameters_estimated=False,
        context_length=int(context) if context is not None else None,
        quantization=_gguf_label(types),
        chat_template=template if isinstance(template, str) else None,
        files=((path.name, path.stat().st_size),),
    )


def _gguf_label(types) -> str:
    """"GGUF Q4_K (some matrices Q6_K)": the decoder matrices' most common type, and the others."""
    if not types:
        return "GGUF"
    (main, _), *others = types.most_common()
    return f"GGUF {main}" + (f" (some matrices {', '.join(t for t, _ in others)})" if others else "")
