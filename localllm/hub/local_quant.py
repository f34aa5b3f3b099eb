"""Quantize after pull: when no pre-quantized variant of an alias fits, quantize its bf16 entry
with localllm.quant (AWQ, GPTQ, FP8) into a new store entry, `alias:awq` and so on.

The quantizer writes into the entry's partial directory (it stages beside it and renames into
place itself); the result then gets a manifest and is published like any download.
NOTE: torch is imported by localllm.quant.quantize, inside quantize_into_store() only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from datetime import datetime, timezone

from localllm.hub.manifest import FileEntry, Manifest
from localllm.hub.progress import Progress, layer_reporter
from localllm.hub.store import Store, StoreEntry

LOCAL_METHODS = ("awq", "gptq", "fp8")


def available() -> bool:
    """Whether this install has the quantizer (localllm.quant.quantize)."""
    try:
        return importlib.util.find_spec("localllm.quant.quantize") is not None
    except (ImportError, ValueError):
        return False


def quantize_into_store(
    store: Store, base: StoreEntry, name: str, method: str, pulled_as: str, log, *, device: str = "auto",
    options: dict | None = None, progress: Progress | None = None,
) -> StoreEntry:
    """Quantize the bf16 entry `base` with `method` into the entry name:method. Each finished
    decoder layer is a PullProgress event for `progress` when given, else a line for `log`."""
    from localllm.quant.quantize import QuantizeOptions, quantize_model

    opts = QuantizeOptions(method=method, device=device, **(options or {}))
    partial = store.partial_dir(name, method)
    if partial.exists():  # NOTE: a quantization cannot be resumed; an interrupted one starts over
        shutil.rmtree(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    log(f"quantizing {base.manifest.display_name} -> {name}:{method} ({opts.scheme_name()}); this takes a while")

    def log_layer(done: int, total: int) -> None:
        log(f"  {method}: layer {done}/{total}")

    on_layer = log_layer if progress is None else layer_reporter(method, progress)

    quantize_model(str(base.path), str(partial), opts, on_layer=on_layer)
    files = tuple(
        FileEntry(p.relative_to(partial).as_posix(), p.stat().st_size, _sha256(p))
        for p in sorted(partial.rglob("*")) if p.is_file()
    )
    manifest = Manifest(
        name=name,
        tag=method,
        repo=base.manifest.repo,
        revision=base.manifest.revision,
        quantization=method,
        format="safetensors",
        entry=".",
        files=files,
        pulled_as=pulled_as,
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        extra={"quantized_from": base.manifest.display_name, "scheme": opts.scheme_name()},
    )
    return store.publish(partial, manifest)


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
