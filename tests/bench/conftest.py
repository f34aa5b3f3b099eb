"""Fixtures for the benchmark tests: the server tests' fake-engine server, and a tiny
random-weight Llama checkpoint (seconds to load) for offline runs."""

from __future__ import annotations

import pytest

from tests.server.conftest import fake_server  # noqa: F401 - the fixture, shared


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    from transformers import LlamaConfig

    from tests.models.tiny_models import VOCAB_SIZE, save_tiny_model

    config = LlamaConfig(
        architectures=["LlamaForCausalLM"], vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-5, eos_token_id=1, bos_token_id=2,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_model(config, path, seed=7)
    return str(path)


class WordTokenizer:
    """One id per word (a stable hash), so prompts can be checked word by word."""

    bos_token_id = None

    def encode(self, text: str) -> list[int]:
        return [sum(map(ord, word)) % 1000 + 3 for word in text.split()]
