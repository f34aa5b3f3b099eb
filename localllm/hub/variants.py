"""Which repository and which of its files make a model: variants of an alias, and the files
worth downloading from a repo listing (weights, config, tokenizer; never pickles, never the
duplicate `consolidated` weights, one GGUF file of the wanted quantization)."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from localllm.errors import ModelNotFoundError
from localllm.hub.aliases import Alias
from localllm.hub.errors import DownloadError
from localllm.hub.names import DEFAULT_GGUF_QUANT, ModelRef

# Tried in order when a GGUF is asked for without a quantization: 4-bit first (the CPU int4 path).
GGUF_PREFERENCE = (DEFAULT_GGUF_QUANT, "Q4_K_S", "Q4_1", "Q4_0", "Q5_K_M", "Q6_K", "Q8_0")
# Top-level files a model directory needs besides its *.safetensors.
MODEL_FILES = frozenset({
    "config.json", "generation_config.json", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
    "quantize_config.json", "quant_config.json",
})
_SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)
_QUANT_IN_NAME = re.compile(r"(?<![A-Za-z0-9])(I?Q[1-8](?:_[A-Z0-9]+)*|BF16|F16|F32)(?![A-Za-z0-9])", re.IGNORECASE)


@dataclass(frozen=True)
class Variant:
    """What a pull fetches, and under which store name."""

    name: str  # store name: the alias, org/repo, or hf.co/org/repo
    tag: str  # store tag: bf16 / awq / gptq / fp8 / a GGUF quant in lower case / "" for a plain repo
    repo: str
    precision: str | None  # bf16, fp8, awq, gptq, gguf; None: a plain repo, read from its config
    quant: str | None = None  # GGUF: the quantization asked for (None: the first of GGUF_PREFERENCE)

    @property
    def format(self) -> str | None:
        return "gguf" if self.precision == "gguf" else ("safetensors" if self.precision else None)


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None = None  # LFS files
    git_sha1: str | None = None  # the git blob id (of the content for non-LFS files)


@dataclass(frozen=True)
class RepoListing:
    repo: str
    revision: str  # commit sha
    files: tuple[RemoteFile, ...]
    gated: bool = False


@dataclass(frozen=True)
class FileSelection:
    format: str  # safetensors | gguf
    entry: str  # "." or the GGUF file
    files: tuple[RemoteFile, ...]
    quant: str | None = None  # GGUF: the quantization taken


def alias_precisions(alias: Alias) -> tuple[str, ...]:
    """Precisions this alias can be pulled in without quantizing locally."""
    return ("bf16", *[p for p in ("fp8", "awq", "gptq", "gguf") if p in alias.variants])


def alias_variant(alias: Alias, precision: str, quant: str | None = None) -> Variant:
    if precision == "bf16":
        return Variant(alias.name, "bf16", alias.repo, "bf16")
    if precision not in alias.variants:
        have = ", ".join(alias_precisions(alias))
        raise ModelNotFoundError(f"{alias.name}:{precision}", f"no pre-quantized {precision} variant (has: {have})")
    # NOTE: a GGUF's tag is its quantization, known once the listing shows which file is taken.
    tag = (quant.lower() if quant else "") if precision == "gguf" else precision
    return Variant(alias.name, tag, alias.variants[precision], precision, quant)


def ref_variant(ref: ModelRef, precision: str | None = None) -> Variant:
    """The variant a tagged name or an explicit precision asks for (no planning here)."""
    if ref.kind == "alias":
        if ref.quant:
            return alias_variant(ref.alias, "gguf", ref.quant)
        return alias_variant(ref.alias, precision or ref.tag)
    if ref.kind == "gguf":
        return Variant(f"hf.co/{ref.repo}", (ref.quant or "").lower(), ref.repo, "gguf", ref.quant)
    if ref.kind == "repo":
        return Variant(ref.repo, "", ref.repo, None)
    raise ValueError(f"{ref.text} is a local path: nothing to pull")


def gguf_quant_of(path: str) -> str | None:
    """The quantization named in a GGUF file name (the last one: "Llama-3-Q4_K_M.gguf" -> Q4_K_M)."""
    found = _QUANT_IN_NAME.findall(posixpath.basename(path)[: -len(".gguf")])
    return found[-1].upper() if found else None


def select_files(listing: RepoListing, variant: Variant) -> FileSelection:
    """The files to download for this variant; DownloadError (one line) when the repo lacks them."""
    has_config = any(f.path == "config.json" for f in listing.files)
    ggufs = [f for f in listing.files if f.path.lower().endswith(".gguf") and "mmproj" not in f.path.lower()]
    if variant.format == "gguf" or (variant.format is None and not has_config and ggufs):
        return _select_gguf(listing, ggufs, variant.quant)
    return _select_safetensors(listing, bool(ggufs))


def _select_gguf(listing: RepoListing, ggufs: list[RemoteFile], quant: str | None) -> FileSelection:
    repo = listing.repo
    if not ggufs:
        raise DownloadError(f"{repo}: no .gguf file in the repository")
    # NOTE: the engine's GGUF reader (models/gguf_file.py) maps one file; the parts of a split
    # GGUF (-00001-of-00003.gguf) are refused, and passed over when no quantization was asked for.
    whole = [f for f in ggufs if not _SPLIT_GGUF.search(f.path)]
    wanted = [quant] if quant else [q for q in GGUF_PREFERENCE]
    for q in wanted:
        matches = sorted((f for f in (ggufs if quant else whole) if gguf_quant_of(f.path) == q),
                         key=lambda f: (f.path.count("/"), f.path))
        if matches:
            chosen = matches[0]
            break
    else:
        if quant is None and len(whole) == 1:
            chosen, q = whole[0], gguf_quant_of(whole[0].path)
        elif quant is None and not whole:
            raise DownloadError(f"{repo}: every GGUF here is split into parts ({_quants(ggufs)}), which localllm "
                                "cannot load yet")
        else:
            asked = quant or " / ".join(GGUF_PREFERENCE)
            raise DownloadError(f"{repo}: no {asked} GGUF file (has: {_quants(ggufs)})")
    if _SPLIT_GGUF.search(chosen.path):
        others = f"single-file ones: {_quants(whole)}" if whole else "this repository has no single-file GGUF"
        raise DownloadError(f"{repo}: {q} is a split GGUF ({chosen.path} is one of its parts), which localllm "
                            f"cannot load yet: pick another quantization ({others})")
    return FileSelection("gguf", chosen.path, (chosen,), q)


def _quants(ggufs: list[RemoteFile]) -> str:
    return ", ".join(sorted({gguf_quant_of(f.path) or posixpath.basename(f.path) for f in ggufs}))


def _select_safetensors(listing: RepoListing, has_gguf: bool) -> FileSelection:
    repo = listing.repo
    top = [f for f in listing.files if "/" not in f.path]
    weights = [
        f for f in top if f.path.endswith(".safetensors") and not f.path.startswith("consolidated")
    ]
    if not weights:
        if has_gguf:
            raise DownloadError(f"{repo}: holds GGUF files, not safetensors: pull hf.co/{repo}:Q4_K_M (or another quantization)")
        if any(f.path.endswith((".bin", ".pt", ".pth")) for f in top):
            raise DownloadError(
                f"{repo}: only PyTorch pickle weights (.bin/.pt), which localllm does not load (it loads safetensors and GGUF)"
            )
        raise DownloadError(f"{repo}: no model weights (*.safetensors) in the repository")
    if not any(f.path == "config.json" for f in top):
        raise DownloadError(f"{repo}: no config.json in the repository: not a Hugging Face model directory")
    files = [f for f in top if f.path in MODEL_FILES] + weights
    return FileSelection("safetensors", ".", tuple(sorted(files, key=lambda f: f.path)))
