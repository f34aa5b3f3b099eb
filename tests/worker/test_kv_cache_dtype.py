"""CacheConfig.kv_cache_dtype: what "auto" picks, which explicit choices a model can take, the
clear error for the rest, and the cache's size in bytes following the dtype."""

from __future__ import annotations

import pytest
import torch

from localllm.config import CacheConfig
from localllm.worker.kv_cache import kv_bytes_per_block
from localllm.worker.model_runner import resolve_kv_cache_dtype

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_is_the_models_dtype_but_bfloat16_for_int4_on_the_cpu():
    assert resolve_kv_cache_dtype("auto", torch.float32, "int4", CPU) == torch.bfloat16
    assert resolve_kv_cache_dtype("auto", torch.float32, None, CPU) == torch.float32
    assert resolve_kv_cache_dtype("auto", torch.float32, "int8", CPU) == torch.float32
    assert resolve_kv_cache_dtype("auto", torch.bfloat16, None, CUDA) == torch.bfloat16
    assert resolve_kv_cache_dtype("auto", torch.float16, "awq", CUDA) == torch.float16


def test_explicit_choices():
    assert resolve_kv_cache_dtype("bfloat16", torch.float32, None, CPU) == torch.bfloat16
    assert resolve_kv_cache_dtype("float32", torch.float32, "int4", CPU) == torch.float32
    assert resolve_kv_cache_dtype("bfloat16", torch.bfloat16, None, CUDA) == torch.bfloat16
    for name, model_dtype, device in (("float16", torch.float32, CPU), ("bfloat16", torch.float16, CUDA),
                                      ("float32", torch.bfloat16, CUDA), ("bfloat16", torch.float32, CUDA)):
        with pytest.raises(ValueError, match="kv_cache_dtype"):
            resolve_kv_cache_dtype(name, model_dtype, None, device)


def test_an_unknown_name_is_refused_when_configured():
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of auto, float32, bfloat16, float16, got 'fp8'"):
        CacheConfig(kv_cache_dtype="fp8")


def test_a_bfloat16_block_is_half_a_float32_one():
    assert kv_bytes_per_block(30, 3, 64, 16, torch.bfloat16) * 2 == kv_bytes_per_block(30, 3, 64, 16, torch.float32)
