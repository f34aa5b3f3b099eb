"""What the user typed -> a typed ModelRef. No file system look-ups beyond "is this a path",
no network.

Forms, tried in this order:
  path      ./dir, /abs/dir, ~/x, model.gguf, a/b/c, or any existing file or directory
  hf.co     hf.co/org/repo[:QUANT]  (also huggingface.co/...): a GGUF file from a Hub repo
  alias     smollm2, llama3.1-8b[:tag]  tag: latest, bf16, awq, gptq, fp8 (a pre-quantized
            variant, or quantized here after pulling bf16), gguf, or a GGUF quantization such
            as q4_k_m or q8_0 (the alias's GGUF repo, that file)
  repo      org/repo[:QUANT]  a Hub repo; with a tag it is a GGUF pick, as hf.co/org/repo:QUANT
NOTE: every name that reaches the store passes REPO_ID / TAG below: no `..`, no separators
other than the one `/` of a repo id, so no name can point outside the store.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from localllm.errors import ModelNotFoundError
from localllm.hub.aliases import Alias, get_alias, load_aliases

# The Hub's own rule (huggingface_hub.utils.validate_repo_id): letters, digits, `-_.`; no `--`
# or `..`; parts do not start or end with `-` or `.`; at most 96 characters each.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
REPO_ID = re.compile(rf"^{_PART}/{_PART}$")
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# GGUF quantization names as llama.cpp writes them in file names: Q4_K_M, IQ4_XS, Q8_0, BF16...
GGUF_QUANT = re.compile(r"^(?:I?Q[1-8](?:_[A-Z0-9]+)*|BF16|F16|F32|TQ[12]_0)$", re.IGNORECASE)
HF_PREFIXES = ("hf.co/", "huggingface.co/", "https://huggingface.co/", "https://hf.co/")
VARIANT_TAGS = ("bf16", "awq", "gptq", "fp8", "gguf")
QUANTIZED_TAGS = ("bf16", "awq", "gptq", "fp8")  # every alias has them: downloaded, or quantized here
DEFAULT_GGUF_QUANT = "Q4_K_M"  # Ollama's default


@dataclass(frozen=True)
class ModelRef:
    text: str  # as typed
    kind: str  # "path" | "alias" | "repo" | "gguf"
    path: Path | None = None  # kind == "path"
    alias: Alias | None = None  # kind == "alias"
    repo: str | None = None  # kind in ("repo", "gguf")
    tag: str = ""  # alias: "" (latest) or one of VARIANT_TAGS or a GGUF quant, lower case
    quant: str | None = None  # a GGUF quantization, upper case (kind "gguf", or an alias's quant tag)

    @property
    def display(self) -> str:
        if self.kind == "alias":
            return self.alias.name + (f":{self.tag}" if self.tag else "")
        if self.kind == "gguf":
            return f"hf.co/{self.repo}" + (f":{self.quant}" if self.quant else "")
        if self.kind == "repo":
            return self.repo
        return str(self.path)


def is_gguf_quant(tag: str) -> bool:
    return bool(GGUF_QUANT.match(tag))


def looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or name.lower().endswith(".gguf")
        or name.count("/") >= 2
        or (os.sep == "\\" and "\\" in name)
    )


def check_repo_id(repo: str, name: str | None = None) -> str:
    if not REPO_ID.match(repo) or "--" in repo or ".." in repo:
        raise ModelNotFoundError(name or repo, f"{repo!r} is not a valid Hub repo id (expected org/name)")
    return repo


def parse_name(name: str) -> ModelRef:
    """Classify a model name; ModelNotFoundError (one line, with a hint) when it is none of the forms."""
    text = name.strip()
    if not text:
        raise ModelNotFoundError(name, "empty model name")
    lowered = text.lower()
    for prefix in HF_PREFIXES:
        if lowered.startswith(prefix):
            return _hf_ref(text, text[len(prefix):])
    path = Path(text).expanduser()
    if looks_like_path(text) or path.exists():
        return ModelRef(text=text, kind="path", path=path)
    base, sep, tag = text.partition(":")
    if sep and not TAG.match(tag):
        raise ModelNotFoundError(text, f"invalid tag {tag!r} (letters, digits, `.`, `_`, `-`)")
    alias = get_alias(base)
    if alias is not None:
        return _alias_ref(text, alias, tag.lower())
    if base.count("/") == 1:
        check_repo_id(base, text)
        if tag:
            return _gguf_ref(text, base, tag)
        return ModelRef(text=text, kind="repo", repo=base)
    raise ModelNotFoundError(text, unknown_hint(base))


def _hf_ref(text: str, rest: str) -> ModelRef:
    repo, _, tag = rest.partition(":")
    check_repo_id(repo, text)
    if tag and not TAG.match(tag):
        raise ModelNotFoundError(text, f"invalid tag {tag!r} (letters, digits, `.`, `_`, `-`)")
    return _gguf_ref(text, repo, tag) if tag else ModelRef(text=text, kind="gguf", repo=repo)


def _gguf_ref(text: str, repo: str, tag: str) -> ModelRef:
    if tag.lower() == "latest":
        return ModelRef(text=text, kind="gguf", repo=repo)
    if not is_gguf_quant(tag):
        raise ModelNotFoundError(
            text, f"{tag!r} is not a GGUF quantization (such as Q4_K_M or Q8_0); a repo id takes no other tag"
        )
    return ModelRef(text=text, kind="gguf", repo=repo, quant=tag.upper())


def _alias_ref(text: str, alias: Alias, tag: str) -> ModelRef:
    if tag in ("", "latest"):
        return ModelRef(text=text, kind="alias", alias=alias)
    # NOTE: awq/gptq/fp8 are valid tags without a pre-quantized variant: pull quantizes locally.
    if tag in QUANTIZED_TAGS or tag in alias.variants:
        return ModelRef(text=text, kind="alias", alias=alias, tag=tag)
    if is_gguf_quant(tag) and "gguf" in alias.variants:
        return ModelRef(text=text, kind="alias", alias=alias, tag=tag, quant=tag.upper())
    known = ", ".join(["latest", *QUANTIZED_TAGS, *(["gguf"] if "gguf" in alias.variants else [])])
    extra = ", or a GGUF quantization such as q4_k_m" if "gguf" in alias.variants else ""
    raise ModelNotFoundError(f"{alias.name}:{tag}", f"unknown tag {tag!r} (known tags: {known}{extra})")


def unknown_hint(base: str) -> str:
    names = list(load_aliases())  # file order: the default model first
    close = difflib.get_close_matches(base.lower(), names, n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
    return f"not a local path, a known alias or a Hub repo id (aliases: {shown})"
