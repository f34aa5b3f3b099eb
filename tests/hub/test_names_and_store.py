"""Name parsing, store slugs, manifests: every name and manifest path that could leave the store
is refused; entries appear only complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localllm.errors import ModelNotFoundError
from localllm.hub.errors import StoreError
from localllm.hub.manifest import MANIFEST, FileEntry, Manifest, check_relative_path, read_manifest
from localllm.hub.names import parse_name
from localllm.hub.store import Store, entry_slug


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("text, kind, display", [
    ("llama3.1-8b", "alias", "llama3.1-8b"),
    ("Llama3.1-8B:AWQ", "alias", "llama3.1-8b:awq"),
    ("llama3.1-8b:latest", "alias", "llama3.1-8b"),
    ("llama3.1-8b:q8_0", "alias", "llama3.1-8b:q8_0"),
    ("Qwen/Qwen3-0.6B", "repo", "Qwen/Qwen3-0.6B"),
    ("org/x-GGUF:q4_k_m", "gguf", "hf.co/org/x-GGUF:Q4_K_M"),
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "gguf", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"),
    ("huggingface.co/org/x-GGUF", "gguf", "hf.co/org/x-GGUF"),
    ("./model", "path", "model"),
    ("/abs/model.gguf", "path", "/abs/model.gguf"),
])
def test_name_forms(text, kind, display):
    ref = parse_name(text)
    assert ref.kind == kind
    assert ref.display == display


def test_alias_quant_tag_needs_a_gguf_variant():
    ref = parse_name("llama3.1-8b:Q8_0")
    assert (ref.tag, ref.quant) == ("q8_0", "Q8_0")
    assert parse_name("smollm2-360m:awq").tag == "awq"  # no pre-quantized variant: quantized here
    with pytest.raises(ModelNotFoundError, match=r"unknown tag 'q4_k_m' \(known tags: latest, bf16, awq, gptq, fp8\)"):
        parse_name("smollm2-360m:q4_k_m")  # no GGUF variant in the table


@pytest.mark.parametrize("text, message", [
    ("org/repo:awq", "'awq' is not a GGUF quantization"),
    ("hf.co/../etc:Q4_K_M", "not a valid Hub repo id"),
    ("hf.co/org/re--po", "not a valid Hub repo id"),
    ("hf.co/org/..", "not a valid Hub repo id"),
    ("org/-repo", "not a valid Hub repo id"),
    ("llama3.1-8b:x/y", "invalid tag"),
    ("llama3.1-8b:..", "invalid tag"),
    ("qwen3-8", "did you mean 'qwen3-8b'"),
])
def test_bad_names_are_refused_with_one_line(text, message):
    with pytest.raises(ModelNotFoundError, match=message) as info:
        parse_name(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name, tag", [
    ("../evil", ""), ("org/../../evil", ""), ("/abs", ""), ("a/b/c", ""), ("ok", "../x"), ("ok", "a/b"),
    ("hf.co/../x", ""), ("org/re--po", ""), ("", ""), ("ok", ".."),
])
def test_slugs_refuse_escaping_names(name, tag):
    with pytest.raises(StoreError, match="not a valid store name: refused"):
        entry_slug(name, tag)


def test_slugs():
    assert entry_slug("llama3.1-8b", "awq") == "llama3.1-8b@awq"
    assert entry_slug("Qwen/Qwen3-0.6B") == "Qwen--Qwen3-0.6B"
    assert entry_slug("hf.co/org/x-GGUF", "q4_k_m") == "hf.co--org--x-GGUF@q4_k_m"


# ---------------------------------------------------------------- manifests


def _manifest(**overrides) -> Manifest:
    fields = dict(name="qwen3-0.6b", tag="bf16", repo="Qwen/Qwen3-0.6B", revision="a" * 40, quantization="bf16",
                  format="safetensors", entry=".", files=(FileEntry("config.json", 2, None, "b" * 40),))
    fields.update(overrides)
    return Manifest(**fields)


def _publish(store: Store, manifest: Manifest, content: bytes = b"{}") -> Path:
    partial = store.partial_dir(manifest.name, manifest.tag)
    partial.mkdir(parents=True, exist_ok=True)
    for f in manifest.files:
        (partial / f.path).parent.mkdir(parents=True, exist_ok=True)
        (partial / f.path).write_bytes(content)
    return store.publish(partial, manifest).directory


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x", "a/./b", "C:/x", "a\\b", "", "a//b"])
def test_manifest_paths_that_leave_the_entry_are_refused(path):
    with pytest.raises(StoreError, match="refused|non-empty"):
        check_relative_path(path, "m.json")


def test_a_manifest_with_an_absolute_path_is_refused_and_not_listed(tmp_path):
    store = Store(tmp_path / "home")
    directory = _publish(store, _manifest())
    data = json.loads((directory / MANIFEST).read_text())
    data["files"].append({"path": "/etc/passwd", "size": 10})
    (directory / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(StoreError, match=r"'/etc/passwd' leaves the store entry"):
        read_manifest(directory / MANIFEST)
    problems: list[str] = []
    assert store.entries(problems) == []
    assert "'/etc/passwd' leaves the store entry" in problems[0]
    with pytest.raises(StoreError):
        store.get("qwen3-0.6b", "bf16")


def test_a_manifest_naming_another_entry_is_refused(tmp_path):
    store = Store(tmp_path / "home")
    directory = _publish(store, _manifest())
    data = json.loads((directory / MANIFEST).read_text())
    data["name"] = "llama3.1-8b"
    (directory / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(StoreError, match="does not belong in qwen3-0.6b@bf16"):
        store.get("qwen3-0.6b", "bf16")


@pytest.mark.parametrize("change, message", [
    ({"schema": 2}, "unknown manifest schema"),
    ({"files": []}, "no files listed"),
    ({"entry": "other.gguf"}, "not one of the listed files"),
    ({"format": "pickle"}, "unknown format"),
    ({"files": [{"path": "config.json", "size": -1}]}, "is not a byte count"),
    ({"files": [{"path": "config.json", "size": 2, "sha256": "xyz"}]}, "is not a hex digest"),
])
def test_malformed_manifests(tmp_path, change, message):
    store = Store(tmp_path / "home")
    directory = _publish(store, _manifest())
    data = json.loads((directory / MANIFEST).read_text())
    data.update(change)
    (directory / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(StoreError, match=message):
        read_manifest(directory / MANIFEST)


def test_manifest_round_trip(tmp_path):
    store = Store(tmp_path / "home")
    manifest = _manifest(tag="q4_k_m", format="gguf", entry="sub/m.gguf", quantization="gguf:Q4_K_M",
                         files=(FileEntry("sub/m.gguf", 2, "c" * 64),), created="2026-01-01T00:00:00Z")
    directory = _publish(store, manifest)
    assert read_manifest(directory / MANIFEST) == manifest
    assert json.loads((directory / MANIFEST).read_text())["size"] == 2
    assert store.get("qwen3-0.6b", "q4_k_m").path == directory / "sub" / "m.gguf"


# ---------------------------------------------------------------- the store


def test_only_entries_with_a_manifest_are_listed(tmp_path):
    store = Store(tmp_path / "home")
    _publish(store, _manifest())
    (store.models / "half-done@bf16").mkdir()
    (store.models / "half-done@bf16" / "config.json").write_text("{}")
    store.partial_dir("qwen3-1.7b", "bf16").mkdir(parents=True)
    assert [e.manifest.display_name for e in store.entries()] == ["qwen3-0.6b:bf16"]
    assert [p.name for p in store.partials()] == ["qwen3-1.7b@bf16"]
    assert store.get("qwen3-1.7b", "bf16") is None


def test_publish_replaces_an_entry_in_one_step(tmp_path):
    store = Store(tmp_path / "home")
    _publish(store, _manifest(), b"{}")
    directory = _publish(store, _manifest(revision="b" * 40), b"[]")
    entry = store.get("qwen3-0.6b", "bf16")
    assert entry.manifest.revision == "b" * 40
    assert (directory / "config.json").read_bytes() == b"[]"
    assert not store.partial_dir("qwen3-0.6b", "bf16").exists()
    assert list(store.trash.iterdir()) == []


def test_remove_and_damaged_entries(tmp_path):
    store = Store(tmp_path / "home")
    directory = _publish(store, _manifest())
    entry = store.get("qwen3-0.6b", "bf16")
    entry.check_files()
    (directory / "config.json").write_bytes(b"{}{}")
    with pytest.raises(StoreError, match=r"config.json: is 4 bytes, the manifest says 2: damaged; pull it again"):
        entry.check_files()
    store.remove(entry)
    assert not directory.exists() and store.entries() == []


def test_remove_refuses_anything_outside_the_store(tmp_path):
    from localllm.hub.store import StoreEntry

    store = Store(tmp_path / "home")
    outside = tmp_path / "precious"
    outside.mkdir()
    with pytest.raises(StoreError, match="not an entry of this store: refused"):
        store.remove(StoreEntry(outside, _manifest()))
    with pytest.raises(StoreError, match="not a partial download of this store: refused"):
        store.remove_partial(outside)
    assert outside.is_dir()
