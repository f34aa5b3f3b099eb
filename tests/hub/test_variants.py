"""Which files a pull takes from a repo listing."""

from __future__ import annotations

import pytest

from localllm.errors import ModelNotFoundError
from localllm.hub.aliases import get_alias
from localllm.hub.errors import DownloadError
from localllm.hub.names import parse_name
from localllm.hub.variants import (
    RemoteFile,
    RepoListing,
    Variant,
    alias_variant,
    gguf_quant_of,
    ref_variant,
    select_files,
)


def _listing(*paths: str) -> RepoListing:
    return RepoListing("org/repo", "a" * 40, tuple(RemoteFile(p, 10) for p in paths))


PLAIN = Variant("org/repo", "", "org/repo", None)


def test_safetensors_takes_weights_config_and_tokenizer_only():
    listing = _listing("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                       "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                       "model.safetensors.index.json", "consolidated.safetensors", "pytorch_model.bin",
                       "README.md", ".gitattributes", "original/model.safetensors", "params.json")
    selection = select_files(listing, PLAIN)
    assert selection.format == "safetensors" and selection.entry == "."
    assert [f.path for f in selection.files] == [
        "config.json", "generation_config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
    ]


@pytest.mark.parametrize("paths, message", [
    (("config.json", "pytorch_model.bin"), "only PyTorch pickle weights"),
    (("config.json",), "no model weights"),
    (("model.safetensors",), "no config.json"),
    (("x-Q4_K_M.gguf", "config.json"), "holds GGUF files, not safetensors: pull hf.co/org/repo:Q4_K_M"),
])
def test_safetensors_repo_problems(paths, message):
    with pytest.raises(DownloadError, match=message):
        select_files(_listing(*paths), PLAIN)


def test_gguf_picks_one_file():
    listing = _listing("README.md", "Model-IQ4_XS.gguf", "Model-Q4_K_S.gguf", "Model-Q4_K_M.gguf", "Model-Q8_0.gguf",
                       "mmproj-Model-Q4_K_M.gguf", "Model-f16.gguf")
    gguf = Variant("hf.co/org/repo", "", "org/repo", "gguf")
    chosen = select_files(listing, gguf)
    assert (chosen.format, chosen.entry, chosen.quant) == ("gguf", "Model-Q4_K_M.gguf", "Q4_K_M")
    assert [f.path for f in chosen.files] == ["Model-Q4_K_M.gguf"]
    assert select_files(listing, Variant("hf.co/org/repo", "q8_0", "org/repo", "gguf", "Q8_0")).entry == "Model-Q8_0.gguf"
    assert select_files(listing, Variant("x", "f16", "org/repo", "gguf", "F16")).entry == "Model-f16.gguf"
    with pytest.raises(DownloadError, match=r"no Q2_K GGUF file \(has: F16, IQ4_XS, Q4_K_M, Q4_K_S, Q8_0\)"):
        select_files(listing, Variant("x", "q2_k", "org/repo", "gguf", "Q2_K"))
    assert select_files(listing, PLAIN).format == "gguf"  # no config.json: a GGUF repo


def test_split_gguf_is_refused_and_passed_over_when_no_quantization_was_asked():
    """The engine's GGUF reader maps one file, so split GGUFs cannot be loaded (yet)."""
    listing = _listing("m-Q4_K_M-00001-of-00002.gguf", "m-Q4_K_M-00002-of-00002.gguf", "m-Q4_0.gguf",
                       "m-Q8_0-00001-of-00002.gguf", "m-Q8_0-00002-of-00002.gguf")
    with pytest.raises(DownloadError, match=r"^org/repo: Q8_0 is a split GGUF \(m-Q8_0-00001-of-00002.gguf is one of "
                                            r"its parts\), which localllm cannot load yet: pick another quantization "
                                            r"\(single-file ones: Q4_0\)$"):
        select_files(listing, Variant("x", "q8_0", "org/repo", "gguf", "Q8_0"))
    chosen = select_files(listing, Variant("x", "", "org/repo", "gguf"))  # Q4_K_M is split: the next one
    assert (chosen.entry, chosen.quant) == ("m-Q4_0.gguf", "Q4_0")
    only_split = _listing("m-Q8_0-00001-of-00002.gguf", "m-Q8_0-00002-of-00002.gguf")
    with pytest.raises(DownloadError, match=r"^org/repo: every GGUF here is split into parts \(Q8_0\), which "
                                            r"localllm cannot load yet$"):
        select_files(only_split, Variant("x", "", "org/repo", "gguf"))
    with pytest.raises(DownloadError, match=r"this repository has no single-file GGUF\)$"):
        select_files(only_split, Variant("x", "q8_0", "org/repo", "gguf", "Q8_0"))


def test_quant_in_file_names():
    assert gguf_quant_of("Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert gguf_quant_of("SmolLM2-135M-Instruct.Q4_1.gguf") == "Q4_1"
    assert gguf_quant_of("qwen2.5-0.5b-instruct-q4_k_m.gguf") == "Q4_K_M"
    assert gguf_quant_of("model-IQ4_XS.gguf") == "IQ4_XS"
    assert gguf_quant_of("model.gguf") is None


def test_alias_variants():
    alias = get_alias("llama3.1-8b")
    assert alias_variant(alias, "bf16") == Variant("llama3.1-8b", "bf16", "meta-llama/Llama-3.1-8B-Instruct", "bf16")
    assert alias_variant(alias, "awq").repo == "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"
    assert ref_variant(parse_name("llama3.1-8b:q8_0")) == Variant(
        "llama3.1-8b", "q8_0", "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF", "gguf", "Q8_0")
    assert ref_variant(parse_name("llama3.1-8b:gguf")).tag == ""  # the quantization is the tag, once chosen
    with pytest.raises(ModelNotFoundError, match=r"no pre-quantized awq variant \(has: bf16, fp8, gguf\)"):
        alias_variant(get_alias("qwen3-0.6b"), "awq")
