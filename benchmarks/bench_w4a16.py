"""GPU benchmark section `w4a16` (run by bench_gpu.py --sections w4a16, or alone):

1. The W4A16 kernel (ops.w4a16_matmul, AWQ/GPTQ weights dequantized in registers, group 128)
   against the fp16 matmul (torch F.linear) on Llama-3-8B layer shapes (qkv 4096x6144, o
   4096x4096, gate_up 4096x28672, down 14336x4096) at batch 1, 4, 16, 64: ms, speedup, and the
   weight bytes read per ms as a fraction of the card's copy bandwidth. Target: >= 3x at batch
   1-16, never below 0.9x up to 64. Beside it, the same weights in FP8 (per-channel scales):
   the W8A16 mode of the same kernels (FP8 linears that keep 16-bit activations) and W8A8
   through torch._scaled_mm where the card has FP8; no target, unmeasured so far.
2. Batch-1 decode of a Llama-3-8B-shaped AWQ model (random int4 weights, group 128, built on the
   device) through the engine: tok/s against the bandwidth floor (every byte a decode step reads,
   over the measured copy bandwidth). Target: >= 70%.

    PYTHONPATH=. python3 benchmarks/bench_w4a16.py [--skip-e2e]

NOTE: the functions take the device and the timer as arguments, so tests run them on the CPU at
toy shapes (tests/kernels/test_bench_w4a16.py): a GPU session must not die on a typo.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

import torch

LLAMA3_8B_LINEARS = {"qkv_proj": (4096, 6144), "o_proj": (4096, 4096), "gate_up_proj": (4096, 28672),
                     "down_proj": (14336, 4096)}
BATCHES = (1, 4, 16, 64)
GROUP = 128


def random_packed(k: int, n: int, group: int, dtype: torch.dtype, device, seed: int = 0):
    """Random 4-bit weights in the engine's layout: (qweight int32 [K/8, N], scales [K/g, N], zeros uint8)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    qweight = torch.randint(-2**31, 2**31 - 1, (k // 8, n), generator=gen, dtype=torch.int32, device=device)
    scales = (torch.rand(k // group, n, generator=gen, device=device) * 0.01 + 0.001).to(dtype)
    zeros = torch.randint(0, 16, (k // group, n), generator=gen, device=device).to(torch.uint8)
    return qweight, scales, zeros


def kernel_figures(bench_ms: Callable[[Callable], float], copy_gbs: float, device="cuda", dtype=torch.float16,
                   shapes: dict | None = None, batches=BATCHES, group: int = GROUP) -> dict:
    from localllm.kernels import ops, reference

    out = {}
    for name, (k, n) in (shapes or LLAMA3_8B_LINEARS).items():
        qweight, scales, zeros = random_packed(k, n, group, dtype, device)
        dense = reference.dequantize_w4a16(qweight, scales, zeros, group, 4).t().contiguous().to(dtype)  # [N, K]
        weight_bytes = qweight.numel() * 4 + scales.numel() * scales.element_size() + zeros.numel()
        # The same weights in FP8 (per-channel scales): the W8A16 kernel and, where the card has
        # FP8, W8A8 through torch._scaled_mm.
        fp8_scale = (dense.float().abs().amax(dim=1) / 448).clamp_min(1e-12)
        fp8_weight = (dense.float() / fp8_scale[:, None]).to(torch.float8_e4m3fn)
        rows = {}
        for m in batches:
            x = torch.randn(m, k, device=device).to(dtype)
            with ops.use_backend("triton"):
                got = ops.w4a16_matmul(x, qweight, scales, zeros, group, 4)
                ms = bench_ms(lambda: ops.w4a16_matmul(x, qweight, scales, zeros, group, 4))
            want = torch.nn.functional.linear(x, dense)
            dense_ms = bench_ms(lambda: torch.nn.functional.linear(x, dense))
            moved = weight_bytes + (m * k + m * n) * x.element_size()
            with ops.use_backend("triton"):
                fp8_w8a16_ms = bench_ms(lambda: ops.fp8_weight_only_linear(x, fp8_weight, fp8_scale))
            fp8_w8a8_ms = (round(bench_ms(lambda: ops.fp8_linear(x, fp8_weight, fp8_scale)), 4)
                           if ops.fp8_supported(x.device) else "no FP8 on this device")
            rows[f"batch{m}"] = {
                "fp8_w8a16_ms": round(fp8_w8a16_ms, 4), "fp8_w8a16_speedup": round(dense_ms / fp8_w8a16_ms, 2),
                "fp8_w8a8_ms": fp8_w8a8_ms,
                "w4a16_ms": round(ms, 4), "fp16_ms": round(dense_ms, 4), "speedup": round(dense_ms / ms, 2),
                "w4a16_GBps": round(moved / ms / 1e6, 1),
                "fraction_of_copy_bandwidth": round(moved / ms / 1e6 / copy_gbs, 3),
                "rel_err_vs_dense": float((got.float() - want.float()).norm() / want.float().norm()),
            }
        out[f"{name} K{k} N{n}"] = rows
    speedups = [r["speedup"] for shape in out.values() for b, r in shape.items() if int(b[5:]) <= 16]
    out["min_speedup_batch_1_16"] = min(speedups) if speedups else None
    out["min_speedup_all"] = min(r["speedup"] for shape in out.values() if isinstance(shape, dict)
                                 for r in shape.values())
    return out


def awq_llama_config(max_len: int, layers: int = 32, hidden: int = 4096, inter: int = 14336, vocab: int = 128256,
                     heads: int = 32, kv_heads: int = 8):
    from transformers import LlamaConfig

    return LlamaConfig(
        architectures=["LlamaForCausalLM"], vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_len, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        quantization_config={"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True,
                             "version": "gemm"},
    )


def awq_weight_stream(config, device, dtype=torch.float16):
    """Random AutoAWQ gemm tensors for every layer (made on the device, one at a time)."""
    gen = torch.Generator(device=device).manual_seed(0)
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = hidden // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, kv), "self_attn.v_proj": (hidden, kv),
              "self_attn.o_proj": (hidden, hidden), "mlp.gate_proj": (hidden, inter), "mlp.up_proj": (hidden, inter),
              "mlp.down_proj": (inter, hidden)}

    def stream():
        yield "model.embed_tokens.weight", torch.randn(config.vocab_size, hidden, device=device, generator=gen).to(dtype) * 0.02
        yield "lm_head.weight", torch.randn(config.vocab_size, hidden, device=device, generator=gen).to(dtype) * 0.02
        yield "model.norm.weight", torch.ones(hidden, device=device, dtype=dtype)
        for i in range(config.num_hidden_layers):
            prefix = f"model.layers.{i}."
            yield prefix + "input_layernorm.weight", torch.ones(hidden, device=device, dtype=dtype)
            yield prefix + "post_attention_layernorm.weight", torch.ones(hidden, device=device, dtype=dtype)
            for name, (k, n) in shapes.items():
                yield prefix + name + ".qweight", torch.randint(-2**31, 2**31 - 1, (k, n // 8), generator=gen,
                                                                device=device, dtype=torch.int32)
                yield prefix + name + ".qzeros", torch.full((k // GROUP, n // 8), 0x88888888 - 2**32,
                                                            device=device, dtype=torch.int32)
                yield prefix + name + ".scales", (torch.rand(k // GROUP, n, device=device, generator=gen) * 0.002).to(dtype)

    count = 3 + config.num_hidden_layers * (2 + 3 * len(shapes))
    return stream, count


def decode_figures(copy_gbs: float, device="cuda", dtype=torch.bfloat16, config=None, output_len: int = 257,
                   enforce_eager: bool = False) -> dict:
    """Batch-1 decode tok/s of an AWQ Llama-3-8B-shaped model next to its bandwidth floor."""
    import time

    from localllm import SamplingParams
    from localllm.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
    from localllm.engine.llm_engine import LLMEngine
    from localllm.models.loader import Checkpoint, LazyWeights
    from localllm.sampling_params import RequestOutputKind

    max_len = 1024
    config = config or awq_llama_config(max_len)
    stream, count = awq_weight_stream(config, device)
    checkpoint = Checkpoint(path="random-llama3-8b-awq", format="memory", hf_config=config, tokenizer=None,
                            chat_template=None, generation_config={}, eos_token_ids=set(),
                            weights=LazyWeights(stream, count), max_model_len=max_len)
    engine = LLMEngine(EngineConfig(
        model=ModelConfig(model="random-llama3-8b-awq", path="", dtype=str(dtype).removeprefix("torch."),
                          device=str(device), max_model_len=max_len, quantization=None, enforce_eager=enforce_eager),
        cache=CacheConfig(block_size=16, num_blocks=256),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=1024, max_model_len=max_len),
    ), checkpoint)
    model = engine.runner.model
    weight_bytes = sum(t.numel() * t.element_size() for n, t in list(model.named_parameters()) + list(model.named_buffers())
                       if "embed_tokens" not in n and "int4_" not in n)
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True, detokenize=False,
                            output_kind=RequestOutputKind.FINAL_ONLY)
    rates = []
    for run in range(3):
        prompt = torch.randint(10, config.vocab_size, (128,), generator=torch.Generator().manual_seed(run)).tolist()
        engine.add_request(f"awq-{run}", {"prompt_token_ids": prompt}, params)
        first = None
        while engine.has_unfinished_requests():
            engine.step()
            if first is None:
                if str(device).startswith("cuda"):
                    torch.cuda.synchronize()
                first = time.perf_counter()
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        rates.append((output_len - 1) / (time.perf_counter() - first))
    rates.sort()
    rate = rates[len(rates) // 2]
    layers, kv_heads = config.num_hidden_layers, config.num_key_value_heads
    head_dim = config.hidden_size // config.num_attention_heads
    kv_bytes = 2 * layers * kv_heads * head_dim * dtype.itemsize * (128 + output_len // 2)
    floor = copy_gbs * 1e9 / (weight_bytes + kv_bytes)
    return {"model": "Llama-3-8B shape, AWQ int4 g128 (random), lm_head and embeddings 16-bit",
            "weight_bytes_per_token": weight_bytes, "batch1_decode_tok_s": round(rate, 2),
            "batch1_floor_tok_s": round(floor, 1), "batch1_fraction_of_floor": round(rate / floor, 3),
            "all_runs_tok_s": [round(r, 2) for r in rates]}


def section(bench_ms: Callable[[Callable], float], copy_gbs: float, skip_e2e: bool = False) -> dict:
    """bench_gpu.py's `w4a16` section."""
    out = {"kernel_fp16": kernel_figures(bench_ms, copy_gbs, dtype=torch.float16)}
    if not skip_e2e:
        torch.cuda.empty_cache()
        out["awq_decode"] = decode_figures(copy_gbs)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--copy-gbs", type=float, default=None, help="skip measuring the copy bandwidth")
    args = parser.parse_args()
    from triton.testing import do_bench

    def bench_ms(fn) -> float:
        return float(do_bench(fn, warmup=50, rep=200, return_mode="median"))

    copy_gbs = args.copy_gbs
    if copy_gbs is None:
        n = 1 << 30
        src = torch.empty(n, dtype=torch.int8, device="cuda")
        dst = torch.empty_like(src)
        copy_gbs = 2 * n / bench_ms(lambda: dst.copy_(src)) / 1e6
        del src, dst
    result = {"copy_bandwidth_GBps": round(copy_gbs, 1), **section(bench_ms, copy_gbs, args.skip_e2e)}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
