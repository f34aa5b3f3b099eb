"""The alias table (assets/aliases.json): short names -> Hugging Face repositories.

Each entry: {"repo": "org/name", "description": "...", "parameters": N, "config": {...},
"variants": {"awq"|"gptq"|"fp8"|"gguf": "org/name"}}. `config` holds the decoder's numbers
(config.json names) so the memory planner can choose a variant before anything is downloaded:
gated base repositories do not serve their config.json without access. `parameters` is the
count the model card states, a cross-check of `config`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

ALIASES_FILE = "aliases.json"
DEFAULT_MODEL = "smollm2"


def asset_path(name: str) -> Path:
    """Path of a file in assets/: the `localllm.assets` package in a wheel, ../assets beside the
    package in a source tree."""
    try:
        from importlib.resources import files

        candidate = files("localllm.assets").joinpath(name)
        if candidate.is_file():
            return Path(str(candidate))
    except (ImportError, TypeError, ValueError, OSError):
        pass  # no localllm.assets package: a source tree without the repo-root __path__ hook
    candidate = Path(__file__).resolve().parents[2] / "assets" / name
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(f"asset {name!r} not found (neither in localllm.assets nor in {candidate.parent})")


@dataclass(frozen=True)
class Alias:
    name: str
    repo: str
    description: str = ""
    variants: dict[str, str] = field(default_factory=dict)
    parameters: int = 0
    config: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def load_aliases() -> dict[str, Alias]:
    with open(asset_path(ALIASES_FILE), encoding="utf-8") as f:
        table = json.load(f)
    return {
        name.lower(): Alias(
            name=name.lower(),
            repo=entry["repo"],
            description=entry.get("description", ""),
            variants=dict(entry.get("variants", {})),
            parameters=int(entry.get("parameters", 0)),
            config=dict(entry.get("config", {})),
        )
        for name, entry in table.items()
    }


def get_alias(name: str) -> Alias | None:
    return load_aliases().get(name.lower())
