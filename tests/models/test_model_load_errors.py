"""Broken, foreign or unsafe model files fail with one clear line naming the file, never a deep
traceback, and never by unpickling anything."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from localllm.errors import ModelLoadError, UnsupportedModelError
from localllm.models.loader import load_checkpoint
from localllm.models.registry import build_model
from tests.models.tiny_models import VOCAB_SIZE, save_tiny_model


def _tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                       architectures=["LlamaForCausalLM"])


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("good")
    save_tiny_model(_tiny_llama_config(), path)
    return path


def _copy(src, tmp_path, name="model"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _one_line(error: Exception, *fragments: str) -> None:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        load_checkpoint(str(tmp_path / "nope"))
    _one_line(e.value, "nope", "no such file")


def test_missing_config(good_dir, tmp_path):
    d = _copy(good_dir, tmp_path)
    os.remove(d / "config.json")
    with pytest.raises(ModelLoadError) as e:
        load_checkpoint(str(d))
    _one_line(e.value, "config.json", "missing")


def test_invalid_config_json(good_dir, tmp_path):
    d = _copy(good_dir, tmp_path)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as e:
        load_checkpoint(str(d))
    _one_line(e.value, "config.json", "invalid JSON")


def test_unsupported_architecture(good_dir, tmp_path):
    d = _copy(good_dir, tmp_path)
    config = json.loads((d / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError) as e:
        load_checkpoint(str(d))
    _one_line(e.value, "GPT2LMHeadModel", "LlamaForCausalLM")


def test_pickle_weights_are_refused(good_dir, tmp_path):
    d = _copy(good_dir, tmp_path)
    os.remove(d / "model.safetensors")
    # Were this file ever unpickled, the load would fail differently (it is not a pickle at all).
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    with pytest.raises(ModelLoadError) as e:
        load_checkpoint(str(d))
    _one_line(e.value, "pytorch_model.bin", "safetensors or GGUF only")


def test_no_weights(good_dir, tmp_path):
    d = _copy(good_dir, tmp_path)
    os.remove(d / "model.safetensors")
    with pytest.raises(ModelLoadError) as e:
        load_checkpoint(str(d))
    _one_line(e.value, "no weights")


@pytest.mark.parametrize("keep", [4, 100, -1000])
def test_truncated_safetensors(good_dir, tmp_path, keep):
    d = _copy(good_dir, tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:keep])
    with pytest.raises(ModelLoadError) as e:
        load_checkpoint(str(d))
    _one_line(e.value, "model.safetensors", "truncated")


def test_index_names_missing_shard(good_dir, tmp_path):
    d = _copy(good_dir, tmp_path)
    os.rename(d / "model.safetensors", d / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors",
                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError) as e:
        load_checkpoint(str(d))
    _one_line(e.value, "model-00002-of-00002.safetensors", "missing")


def test_missing_and_misshapen_weights(good_dir):
    ckpt = load_checkpoint(str(good_dir))
    model = build_model(ckpt.hf_config, torch.float32, torch.device("cpu"))
    weights = [(n, t) for n, t in ckpt.weights if "k_proj" not in n]
    with pytest.raises(ModelLoadError) as e:
        model.load_weights(weights)
    _one_line(e.value, "missing weights", "model.layers.0.self_attn.qkv_proj.weight[k]")
    bad = [(n, t[:-1] if n == "model.norm.weight" else t) for n, t in ckpt.weights]
    with pytest.raises(ModelLoadError) as e:
        model.load_weights(bad)
    _one_line(e.value, "model.norm.weight", "shape")
    with pytest.raises(ModelLoadError) as e:
        model.load_weights([("model.layers.7.mlp.up_proj.weight", torch.zeros(3))])
    _one_line(e.value, "unexpected weight")


def test_sliding_window_beyond_max_len_is_clamped_or_refused(good_dir, tmp_path):
    from transformers import MistralConfig

    cfg = MistralConfig(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                        sliding_window=32, architectures=["MistralForCausalLM"])
    save_tiny_model(cfg, tmp_path)
    ckpt = load_checkpoint(str(tmp_path))
    assert ckpt.max_model_len == 32 and "sliding" in ckpt.notes[0]
    build_model(ckpt.hf_config, torch.float32, torch.device("cpu"), max_model_len=ckpt.max_model_len)
    with pytest.raises(ModelLoadError) as e:
        build_model(ckpt.hf_config, torch.float32, torch.device("cpu"))
    _one_line(e.value, "sliding-window", "max_model_len <= 32")


# --------------------------------------------------------------------------- GGUF


def test_garbage_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ModelLoadError) as e:
        load_checkpoint(str(path))
    _one_line(e.value, "model.gguf", "not a GGUF file")


def test_empty_gguf(tmp_path):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError) as e:
        load_checkpoint(str(path))
    _one_line(e.value, "empty.gguf")


@pytest.mark.parametrize("fraction", [0.001, 0.5, 0.999])
def test_truncated_gguf(smollm2_gguf, tmp_path, fraction):
    size = os.path.getsize(smollm2_gguf)
    path = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as src:
        path.write_bytes(src.read(int(size * fraction)))
    with pytest.raises(ModelLoadError) as e:
        load_checkpoint(str(path))
    _one_line(e.value, "cut.gguf", "truncated")


def test_unsupported_gguf_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError) as e:
        load_checkpoint(str(path))
    _one_line(e.value, "gpt2.gguf", "'gpt2'")


def test_not_a_model_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ModelLoadError) as e:
        load_checkpoint(str(path))
    _one_line(e.value, "notes.txt")
