"""Fixtures for the store and download tests: an empty store and HF cache, no token, online
mode, and a stand-in Hub (fake_hub.py) that HF_ENDPOINT points at."""

from __future__ import annotations

import json
import struct

import pytest

from tests.hub.fake_hub import FakeHub


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Empty store and HF cache; nothing on this machine leaks in; online, no token."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    # NOTE: huggingface_hub reads these at import; tests/engine's conftest sets HF_HUB_OFFLINE=1.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


CHUNK = 64 * 1024


@pytest.fixture
def hub(home, monkeypatch):
    import huggingface_hub.constants as hf_constants

    # NOTE: huggingface_hub writes a download in 10 MB reads; bytes of an unfinished read are lost
    # when a connection breaks. Smaller reads let files of a few hundred KB be cut mid-way.
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    fake = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
    yield fake
    fake.stop()


def safetensors_bytes(tensors: dict[str, tuple[list[int], int]]) -> bytes:
    """A valid safetensors file of float32 tensors: name -> (shape, fill byte)."""
    header, blobs, offset = {}, [], 0
    for name, (shape, fill) in tensors.items():
        n = 4
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        blobs.append(bytes([fill]) * n)
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
    "max_position_embeddings": 2048, "torch_dtype": "bfloat16",
}


def safetensors_repo_files(shard_bytes: int = 300_000) -> dict[str, bytes]:
    """A sharded safetensors model with tokenizer files, plus files a pull must leave behind."""
    rows = shard_bytes // (4 * 64)
    shard1 = safetensors_bytes({"model.embed_tokens.weight": ([rows, 64], 1)})
    shard2 = safetensors_bytes({"lm_head.weight": ([rows, 64], 2)})
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    return {
        "config.json": json.dumps(TINY_CONFIG).encode(),
        "generation_config.json": b'{"eos_token_id": 2}',
        "tokenizer.json": b'{"version": "1.0"}',
        "tokenizer_config.json": json.dumps({"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}).encode(),
        "model.safetensors.index.json": json.dumps(index).encode(),
        "model-00001-of-00002.safetensors": shard1,
        "model-00002-of-00002.safetensors": shard2,
        "README.md": b"# tiny\n",
        "pytorch_model.bin": b"\x80pickle" * 100,
        "consolidated.safetensors": safetensors_bytes({"tok_embeddings.weight": ([rows, 64], 3)}),
        "original/params.json": b"{}",
    }
