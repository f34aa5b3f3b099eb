"""Names -> files: aliases, the local model store, downloads from the Hugging Face Hub. No torch
here, and huggingface_hub only inside the functions that talk to the Hub.

  names.py     what the user typed -> ModelRef (alias[:tag], org/repo, hf.co/org/repo:QUANT, path)
  resolve.py   ModelRef -> a local path (store, Hugging Face cache, bundled SmolLM2)
  store.py     <LOCALLLM_HOME>/models/<entry>/manifest.json; partial downloads; atomic publish
  manifest.py  the manifest of one entry, checked on every read
  variants.py  which repo and which of its files make a model
  remote.py    the Hub: file listing, resumable checked downloads, one-line errors
  download.py  a selection of files into a store entry, several at a time, then published
  progress.py  PullProgress events (bytes per file and overall, rate; layers of a quantization)
  bars.py      those events as rich bars on stderr (`localllm pull`)
  choose.py    which variant to pull: tag, --quantization, or the memory planner (quant/fit.py)
  local_quant.py  quantize after pull, when no pre-quantized variant fits (localllm.quant)
  pull.py      pull() and ensure_model() (pull on first use)
  describe.py  what `localllm show` prints about a local model
"""

from localllm.hub.aliases import DEFAULT_MODEL, Alias, asset_path, get_alias, load_aliases
from localllm.hub.resolve import localllm_home, models_dir, resolve_model, smollm2_gguf_path


def ensure_model(name: str, **kwargs) -> str:
    """Resolve `name` locally, pulling it from the Hub first when it is not here (see pull.py)."""
    from localllm.hub.pull import ensure_model as _ensure_model

    return _ensure_model(name, **kwargs)


__all__ = [
    "DEFAULT_MODEL",
    "Alias",
    "asset_path",
    "ensure_model",
    "get_alias",
    "load_aliases",
    "localllm_home",
    "models_dir",
    "resolve_model",
    "smollm2_gguf_path",
]
