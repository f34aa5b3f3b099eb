"""The methods' building blocks: GPTQ's error feedback beats rounding on the layer's own inputs,
act-order bookkeeping, AWQ's searches never do worse than no scaling / no clipping, and the
one-layer-at-a-time runner composes into exactly the engine's full model."""

from __future__ import annotations

import torch

from localllm.quant.awq import search_clip, search_scale
from localllm.quant.gptq import gptq_quantize
from localllm.quant.rtn import fake_quantize, quantize_groups


def correlated_inputs(tokens: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=gen) / k**0.5
    scale = torch.logspace(-1, 1, k)[torch.randperm(k, generator=gen)]  # some channels matter more
    return (torch.randn(tokens, k, generator=gen) @ mix) * scale


def output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float((x @ w.t() - x @ w_hat.t()).pow(2).mean())


def test_gptq_beats_rounding_on_its_inputs():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(96, 128, generator=gen) * 0.05
    x = correlated_inputs(2048, 128, seed=1)
    h = 2 * x.t() @ x / x.shape[0]
    for sym in (True, False):
        for act_order in (False, True):
            gq = gptq_quantize(w, h, 4, 32, sym, act_order)
            rtn = quantize_groups(w, 4, 32, sym, min_zero=1).dequantize()
            assert output_error(x, w, gq.dequantize()) < 0.7 * output_error(x, w, rtn)
            assert int(gq.zeros.min()) >= 1  # GPTQ v1 can store it
            assert (gq.g_idx is not None) == act_order


def test_gptq_act_order_groups_and_dead_columns():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(16, 64, generator=gen)
    x = correlated_inputs(256, 64, seed=3)
    x[:, 5] = 0.0  # a dead input channel
    h = 2 * x.t() @ x / x.shape[0]
    gq = gptq_quantize(w, h, 4, 16, sym=True, act_order=True)
    counts = torch.bincount(gq.g_idx.long(), minlength=4)
    assert counts.tolist() == [16, 16, 16, 16]
    assert int(torch.argmax(torch.diag(h))) in torch.nonzero(gq.g_idx == 0).flatten().tolist()  # first group
    assert gq.dequantize()[:, 5].abs().max() < 1e-6  # a dead channel's weights are dropped, as GPTQ does


def test_awq_searches_never_lose_to_doing_nothing():
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(64, 128, generator=gen) * 0.05
    x = correlated_inputs(512, 128, seed=5)
    x[:, :4] *= 30  # salient channels
    s = search_scale(w, x, x.abs().mean(0), 32)
    scaled = fake_quantize(w * s, 4, 32) / s
    assert output_error(x, w, scaled) <= output_error(x, w, fake_quantize(w, 4, 32)) * 0.5
    clip = search_clip(w * s, x / s, 32)
    assert clip.shape == (64, 4) and (clip <= (w * s).abs().reshape(64, 4, 32).amax(-1) + 1e-7).all()


def test_layer_runner_composes_into_the_full_model(tmp_path):
    from localllm.kernels import reference
    from localllm.models.loader import load_checkpoint
    from localllm.quant.layerwise import LayerRunner
    from localllm.quant.weights import open_weights
    from tests.quant.hub_fixtures import engine_model
    from tests.quant.tiny import random_tiny_model

    path = random_tiny_model(str(tmp_path / "m"), seed=6, layers=3)
    checkpoint = load_checkpoint(path)
    source = open_weights(checkpoint)
    windows = torch.randint(0, 256, (3, 32), generator=torch.Generator().manual_seed(7))
    runner = LayerRunner(checkpoint.hf_config, source, torch.device("cpu"), seq_len=32, batch_size=2)
    hidden = torch.nn.functional.embedding(windows, source.get("model.embed_tokens.weight"))
    for i in range(3):
        hidden = runner.forward(runner.load(i), hidden)
    layerwise = reference.rms_norm(hidden, source.get("model.norm.weight"), checkpoint.hf_config.rms_norm_eps)
    from tests.quant.hub_fixtures import engine_logits

    model = engine_model(path)
    for w in range(3):
        want = engine_logits(path, windows[w].tolist(), model)
        got = layerwise[w] @ source.get("lm_head.weight").t()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_quantized_variants_round_trip_through_the_engine(tmp_path):
    """Qwen2 (q/k/v biases) and Qwen3 (q/k norms) quantize and load back through the engine to
    exactly the weights the method chose; biases and norms survive in 16 bits."""
    from localllm.quant.quantize import QuantizeOptions, quantize_model
    from localllm.quant.rtn import dequantize_fp8, quantize_fp8
    from tests.quant.hub_fixtures import engine_model
    from tests.quant.tiny import random_tiny_model

    for arch in ("qwen2", "qwen3"):
        src = random_tiny_model(str(tmp_path / arch), seed=8, arch=arch)
        original = dict(engine_model(src).named_parameters())
        for method in ("rtn", "fp8"):
            out = tmp_path / f"{arch}-{method}"
            quantize_model(src, str(out), QuantizeOptions(method=method, group_size=32, seq_len=32, num_heldout=1,
                                                          fp8_algorithm="rtn", fp8_keep=0,
                                                          fp8_keep_activations=0))
            model = engine_model(str(out))
            checked = 0
            for name, module in model.named_modules():
                if hasattr(module, "dequantized_weight"):
                    w = original[f"{name}.weight"]
                    want = fake_quantize(w, 4, 32) if method == "rtn" else dequantize_fp8(*quantize_fp8(w))
                    torch.testing.assert_close(module.dequantized_weight(), want, rtol=0, atol=1e-6)
                    checked += 1
            assert checked == 8
            for name, param in model.named_parameters():
                if name.endswith("bias") or "norm" in name:
                    sixteen = torch.float16 if method == "rtn" else torch.bfloat16
                    torch.testing.assert_close(param, original[name].to(sixteen).float(), rtol=0, atol=0)
