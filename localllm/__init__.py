"""localllm: run open LLMs fast on one machine.

Public API (mirrors vLLM's offline API): LLM, AsyncLLM, SamplingParams, RequestOutput.
Heavy modules (torch, transformers) load on first use of these names, so that
`import localllm` and the CLI's help stay fast.
"""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"
__all__ = ["LLM", "AsyncLLM", "SamplingParams", "RequestOutput", "CompletionOutput", "__version__"]

# NOTE: in the wheel, kernels/ and assets/ are installed as localllm.kernels and
# localllm.assets (see pyproject.toml). Run from a source tree (PYTHONPATH=.), they sit beside
# this package; extending __path__ to the repository root resolves the same names there.
_repo_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "kernels")) and _os.path.isfile(
    _os.path.join(_repo_root, "kernels", "ops.py")
):
    __path__.append(_repo_root)  # type: ignore[name-defined]

_LAZY = {
    "LLM": ("localllm.entrypoints", "LLM"),
    "AsyncLLM": ("localllm.engine.async_llm", "AsyncLLM"),
    "SamplingParams": ("localllm.sampling_params", "SamplingParams"),
    "RequestOutput": ("localllm.outputs", "RequestOutput"),
    "CompletionOutput": ("localllm.outputs", "CompletionOutput"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'localllm' has no attribute {name!r}")
