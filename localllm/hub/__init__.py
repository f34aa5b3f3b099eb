"""Names -> files: aliases, the local model store, the Hugging Face cache. No torch here."""

from localllm.hub.aliases import DEFAULT_MODEL, Alias, asset_path, get_alias, load_aliases
from localllm.hub.resolve import localllm_home, models_dir, resolve_model, smollm2_gguf_path

__all__ = [
    "DEFAULT_MODEL",
    "Alias",
    "asset_path",
    "get_alias",
    "load_aliases",
    "localllm_home",
    "models_dir",
    "resolve_model",
    "smollm2_gguf_path",
]
