"""Load-time quantization through bitsandbytes (optional extra): nf4 and int8 linears stay close to
the dense layers they replace, and `LLM(..., quantization="nf4" | "int8")` runs a model with them."""

from __future__ import annotations

import pytest
import torch

from localllm.layers.bnb_linear import bnb_available

pytestmark = pytest.mark.skipif(not bnb_available(), reason="bitsandbytes is not installed")


@pytest.mark.parametrize("mode,tolerance", [("nf4", 0.12), ("int8", 0.02)])
def test_bnb_linear_is_close_to_the_dense_layer(mode, tolerance):
    from localllm.layers.bnb_linear import BnbLinear
    from localllm.layers.linear import QKVLinear

    gen = torch.Generator().manual_seed(0)
    layer = QKVLinear(128, 32, 4, 2, True, torch.float32, torch.device("cpu"))
    layer.weight.data.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.05)
    layer.bias.data.copy_(torch.randn(layer.bias.shape, generator=gen))
    x = torch.randn(3, 7, 128, generator=gen)
    want = layer(x)
    quantized = BnbLinear(layer, mode)
    got = quantized(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    error = float((got - want).norm() / want.norm())
    assert 1e-5 < error < tolerance  # quantized (not a copy), and close
    stored = sum(t.numel() * t.element_size() for t in list(quantized.parameters()) + list(quantized.buffers()))
    assert stored < layer.weight.numel() * (0.7 if mode == "nf4" else 1.2)


@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_llm_runs_with_load_time_quantization(mode, tmp_path):
    from localllm import LLM, SamplingParams
    from localllm.layers.bnb_linear import BnbLinear
    from tests.quant.tiny import random_tiny_model

    path = random_tiny_model(str(tmp_path / "m"), seed=5, hidden=128, inter=256)
    reference = LLM(model=path, quantization=None, kv_cache_blocks=32, max_model_len=128)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    prompt = {"prompt_token_ids": [72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]}
    want = reference.generate([prompt], params)[0].outputs[0].token_ids
    llm = LLM(model=path, quantization=mode, kv_cache_blocks=32, max_model_len=128)
    model = llm.engine.runner.model
    assert sum(isinstance(m, BnbLinear) for m in model.modules()) == 4 * model.config.num_hidden_layers
    got = llm.generate([prompt], params)[0].outputs[0].token_ids
    assert len(got) == 8
    if mode == "int8":  # LLM.int8() is near-lossless: the greedy answer starts the same
        assert got[:3] == want[:3]
