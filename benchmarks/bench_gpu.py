"""GPU benchmark: the card's ceilings, the attention kernels, and the engine end to end, in one run.

    PYTHONPATH=. python3 benchmarks/bench_gpu.py [--output benchmarks/results-<card>.json]
        [--skip-hf] [--sections ceilings,decode_attention,prefill_attention,e2e,w4a16,prefill_sweep]

1. Ceilings: device-to-device copy bandwidth (bytes read + written) and the bf16 matrix rate
   (8192^3 through torch.matmul), both measured here, not taken from a datasheet.
2. Decode attention (batch 64 x 4096 context, GQA 32/8, head dim 128, bf16, block 16): GB/s of
   K/V read as a fraction of the copy bandwidth.
3. Prefill attention (causal, GQA 32/8, head dim 128, bf16): TFLOP/s next to
   torch.nn.functional.scaled_dot_product_attention on the same shapes.
4. End to end on a Llama-3-8B-shaped model with random bf16 weights built on the device, each
   figure next to Hugging Face transformers `generate` on the same weights:
   batch-1 decode tok/s (and the fraction of the bandwidth floor), throughput with 256 requests
   of 200 prompt / 180 output tokens, time to first token of one 8k-token prompt.
5. W4A16 (benchmarks/bench_w4a16.py). 6. The prefill kernel's launch configs swept on section
   3's shapes (PREFILL_SWEEP), last: it only informs prefill_config's table.
Timings are medians of repeated runs after warm-up (triton.testing.do_bench for kernels).
Writes JSON (with the card, versions and the command) and prints a table last.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass

import torch

RESULTS: dict = {}


def _save(path: str) -> None:
    with open(path, "w") as f:
        json.dump(RESULTS, f, indent=2)


def bench_ms(fn, warmup: int = 50, rep: int = 200) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


# ---------------------------------------------------------------- 1. ceilings


def ceilings() -> dict:
    n = 1 << 30  # bytes per buffer: far past L2
    src = torch.randint(-128, 127, (n,), dtype=torch.int8, device="cuda")
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    copy_gbs = 2 * n / ms / 1e6
    del src, dst
    size = 8192
    a = torch.randn(size, size, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(size, size, dtype=torch.bfloat16, device="cuda")
    ms = bench_ms(lambda: a @ b, warmup=100, rep=300)
    tflops = 2 * size**3 / ms / 1e9
    return {"copy_bandwidth_GBps": round(copy_gbs, 1), "bf16_matmul_TFLOPs": round(tflops, 1)}


# ---------------------------------------------------------------- 2. decode attention


def _paged_batch(seq_lens: list[int], num_kv_heads: int, head_dim: int, block_size: int, dtype, seed: int,
                 device: str = "cuda"):
    """A cache holding seq_lens[i] random tokens of each sequence in shuffled blocks."""
    gen = torch.Generator(device=device).manual_seed(seed)
    blocks = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks) + 1
    kv_cache = torch.randn(2, num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype, device=device, generator=gen)
    order = torch.randperm(num_blocks, device=device, generator=gen).to(torch.int32)
    table = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32, device=device)
    start = 0
    for i, n in enumerate(blocks):
        table[i, :n] = order[start : start + n]
        start += n
    return kv_cache, table


def decode_attention(copy_gbs: float) -> dict:
    from localllm.kernels import ops

    out = {}
    for block_size in (16, 32):
        num_seqs, context, num_heads, num_kv_heads, head_dim = 64, 4096, 32, 8, 128
        seq_lens = [context] * num_seqs
        kv_cache, table = _paged_batch(seq_lens, num_kv_heads, head_dim, block_size, torch.bfloat16, seed=1)
        query = torch.randn(num_seqs, num_heads, head_dim, dtype=torch.bfloat16, device="cuda")
        seq_lens_t = torch.tensor(seq_lens, dtype=torch.int32, device="cuda")
        starts = list(range(num_seqs + 1))
        starts_t = torch.tensor(starts, dtype=torch.int32, device="cuda")

        def run():
            return ops.paged_attention(query, kv_cache, starts_t, seq_lens_t, table, head_dim**-0.5, 1, context,
                                       starts, seq_lens)

        got = run()
        with ops.use_backend("reference"):
            want = run()
            ref_ms = bench_ms(run, warmup=5, rep=20)
        rel_err = ((got.float() - want.float()).norm() / want.float().norm()).item()
        ms = bench_ms(run)
        kv_bytes = 2 * num_seqs * context * num_kv_heads * head_dim * 2
        gbs = (kv_bytes + 2 * query.numel() * 2) / ms / 1e6
        out[f"block{block_size}"] = {
            "shape": f"{num_seqs} seqs x {context} ctx, {num_heads}/{num_kv_heads} heads, d{head_dim}, bf16",
            "ms": round(ms, 4),
            "GBps": round(gbs, 1),
            "fraction_of_copy_bandwidth": round(gbs / copy_gbs, 3),
            "torch_reference_ms": round(ref_ms, 3),
            "rel_err_vs_reference": rel_err,
        }
        del kv_cache
    return out


# ---------------------------------------------------------------- 3. prefill attention


def prefill_attention() -> dict:
    import torch.nn.functional as F

    from localllm.kernels import ops

    out = {}
    num_heads, num_kv_heads, head_dim, block_size = 32, 8, 128, 16
    for num_seqs, length in ((1, 8192), (4, 2048), (16, 512)):
        seq_lens = [length] * num_seqs
        kv_cache, table = _paged_batch(seq_lens, num_kv_heads, head_dim, block_size, torch.bfloat16, seed=2)
        total = num_seqs * length
        query = torch.randn(total, num_heads, head_dim, dtype=torch.bfloat16, device="cuda")
        starts = [i * length for i in range(num_seqs + 1)]
        starts_t = torch.tensor(starts, dtype=torch.int32, device="cuda")
        seq_lens_t = torch.tensor(seq_lens, dtype=torch.int32, device="cuda")
        scale = head_dim**-0.5

        def ours():
            return ops.paged_attention(query, kv_cache, starts_t, seq_lens_t, table, scale, length, length,
                                       starts, seq_lens)

        # SDPA on the same keys/values, laid out densely: [B, H, L, D].
        blocks = table.long()
        k = kv_cache[0][blocks].reshape(num_seqs, length, num_kv_heads, head_dim).transpose(1, 2).contiguous()
        v = kv_cache[1][blocks].reshape(num_seqs, length, num_kv_heads, head_dim).transpose(1, 2).contiguous()
        q = query.view(num_seqs, length, num_heads, head_dim).transpose(1, 2).contiguous()
        group = num_heads // num_kv_heads
        k_full, v_full = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)

        def sdpa_expanded():
            return F.scaled_dot_product_attention(q, k_full, v_full, is_causal=True, scale=scale)

        def sdpa_gqa():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)

        got = ours()
        want = sdpa_expanded().transpose(1, 2).reshape(total, num_heads, head_dim)
        rel_err = ((got.float() - want.float()).norm() / want.float().norm()).item()
        flops = 4 * num_seqs * num_heads * head_dim * length * (length + 1) / 2  # causal half
        ms = bench_ms(ours)
        sdpa_ms = {"expanded_kv": bench_ms(sdpa_expanded)}
        try:
            sdpa_ms["enable_gqa"] = bench_ms(sdpa_gqa)
        except Exception as e:  # older torch: no enable_gqa
            sdpa_ms["enable_gqa_error"] = str(e)[:200]
        best_sdpa = min(v for v in sdpa_ms.values() if isinstance(v, float))
        out[f"{num_seqs}x{length}"] = {
            "ms": round(ms, 4),
            "TFLOPs": round(flops / ms / 1e9, 1),
            "sdpa_ms": {k_: round(v_, 4) for k_, v_ in sdpa_ms.items() if isinstance(v_, float)},
            "sdpa_TFLOPs": round(flops / best_sdpa / 1e9, 1),
            "ratio_vs_sdpa": round(best_sdpa / ms, 3),
            "rel_err_vs_sdpa": rel_err,
        }
        del kv_cache, k, v, k_full, v_full
    return out


# Launch configs (block_m, block_n, block_n_diag, num_warps, num_stages) the sweep times; the
# first is prefill_config's default at D=128 bf16. Unmeasured alternatives: smaller key tiles
# (less masked work on the diagonal of 32-token q tiles), fewer stages (two CTAs per SM).
PREFILL_SWEEP = [
    (128, 128, 128, 8, 3), (128, 128, 32, 8, 3), (128, 128, 64, 8, 3), (128, 128, 32, 8, 2),
    (128, 64, 64, 4, 3), (128, 64, 32, 4, 3), (128, 64, 64, 8, 3), (128, 64, 32, 8, 3),
    (128, 64, 32, 4, 2), (64, 64, 64, 4, 3), (64, 64, 16, 4, 3), (64, 128, 16, 4, 2),
]


def prefill_sweep(timer=None, device: str = "cuda", dtype=torch.bfloat16,
                  shapes=((1, 8192), (4, 2048), (16, 512)), heads=(32, 8, 128), configs=PREFILL_SWEEP) -> dict:
    """TFLOP/s of each launch config in `configs` on prefill_attention's shapes (the first config's
    output is the one the others must match); a config that fails to compile (shared memory), is
    refused, or gives another output is recorded with why. timer(fn) -> ms (default bench_ms)."""
    from localllm.kernels.triton.attention_prefill import paged_attention_prefill

    timer = timer or (lambda fn: bench_ms(fn, warmup=25, rep=100))
    out = {}
    (num_heads, num_kv_heads, head_dim), block_size = heads, 16
    for num_seqs, length in shapes:
        seq_lens = [length] * num_seqs
        kv_cache, table = _paged_batch(seq_lens, num_kv_heads, head_dim, block_size, dtype, seed=2, device=device)
        query = torch.randn(num_seqs * length, num_heads, head_dim, dtype=dtype, device=device)
        starts_t = torch.tensor([i * length for i in range(num_seqs + 1)], dtype=torch.int32, device=device)
        seq_lens_t = torch.tensor(seq_lens, dtype=torch.int32, device=device)
        flops = 4 * num_seqs * num_heads * head_dim * length * (length + 1) / 2

        def run(cfg):
            block_m, block_n, block_n_diag, num_warps, num_stages = cfg
            return paged_attention_prefill(query, kv_cache, starts_t, seq_lens_t, table, head_dim**-0.5, length,
                                           length, block_m=block_m, block_n=block_n, block_n_diag=block_n_diag,
                                           num_warps=num_warps, num_stages=num_stages)

        want = run(configs[0]).float()
        shape = {}
        for cfg in configs:
            key = "m{}_n{}_diag{}_w{}_s{}".format(*cfg)
            try:
                rel_err = ((run(cfg).float() - want).norm() / want.norm()).item()
                if rel_err > 1e-2:
                    shape[key] = f"wrong output: rel err {rel_err:.3g} vs the default config"
                    continue
                shape[key] = float(f"{flops / timer(lambda: run(cfg)) / 1e9:.4g}")  # TFLOP/s
            except Exception as e:  # out of shared memory, or a compile error: keep sweeping
                shape[key] = f"{type(e).__name__}: {str(e)[:160]}"
        timed = {k: v for k, v in shape.items() if isinstance(v, float)}
        shape["best"] = max(timed, key=timed.get) if timed else None
        out[f"{num_seqs}x{length}"] = shape
        del kv_cache
    return out


# ---------------------------------------------------------------- 4. end to end


def llama3_8b_config(max_len: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=max_len,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_id=128001,
    )


def build_hf_model(config):
    from transformers import LlamaForCausalLM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.config._attn_implementation = "sdpa"
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    return model.eval()


def _sync_time(fn) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def hf_figures(model, vocab: int) -> dict:
    gen = torch.Generator().manual_seed(5)

    def ids(batch: int, length: int) -> torch.Tensor:
        return torch.randint(10, vocab, (batch, length), generator=gen).cuda()

    def generate(input_ids, new_tokens):
        with torch.inference_mode():
            return model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    generate(ids(1, 16), 4)  # warm-up
    out = {}
    ttft = statistics.median(_sync_time(lambda: generate(ids(1, 8192), 1)) for _ in range(3))
    out["ttft_8k_s"] = round(ttft, 4)
    prompt = ids(1, 128)
    first = statistics.median(_sync_time(lambda: generate(prompt, 1)) for _ in range(3))
    total = _sync_time(lambda: generate(prompt, 129))
    out["batch1_decode_tok_s"] = round(128 / (total - first), 2)
    batch = ids(256, 200)
    seconds = _sync_time(lambda: generate(batch, 180))
    out["throughput_256x200_180"] = {"seconds": round(seconds, 3),
                                     "total_tok_s": round(256 * 380 / seconds, 1),
                                     "output_tok_s": round(256 * 180 / seconds, 1)}
    return out


def build_engine(config, hf_model, max_len: int, max_num_seqs: int = 256, device: str = "cuda"):
    from localllm.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
    from localllm.engine.llm_engine import LLMEngine
    from localllm.models.loader import Checkpoint, LazyWeights

    state = hf_model.state_dict()
    checkpoint = Checkpoint(
        path="random-llama3-8b-shaped",
        format="memory",
        hf_config=config,
        tokenizer=None,
        chat_template=None,
        generation_config={},
        eos_token_ids=set(),
        weights=LazyWeights(lambda: iter(state.items()), len(state)),
        max_model_len=max_len,
    )
    engine_config = EngineConfig(
        model=ModelConfig(model="random-llama3-8b-shaped", path="", dtype="bfloat16", device=device,
                          max_model_len=max_len, quantization=None),
        cache=CacheConfig(block_size=16, gpu_memory_utilization=0.90, cpu_kv_cache_gib=0.25),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=8192, max_model_len=max_len),
    )
    engine = LLMEngine(engine_config, checkpoint)
    state.clear()  # NOTE: the checkpoint's weight stream must not keep the HF tensors alive
    return engine


def _run_requests(engine, prompts: list[list[int]], max_tokens: int) -> dict:
    """Add all requests at once, step until done; times of first and last token."""
    from localllm import SamplingParams
    from localllm.sampling_params import RequestOutputKind

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False,
                            output_kind=RequestOutputKind.FINAL_ONLY)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{time.monotonic_ns()}-{i}", {"prompt_token_ids": prompt}, params)
    first_token = None
    generated = 0
    steps = 0
    while engine.has_unfinished_requests():
        outputs = engine.step()
        steps += 1
        if first_token is None:
            first_token = time.perf_counter()
        generated += sum(len(o.outputs[0].token_ids) for o in outputs if o.finished)
    ended = time.perf_counter()
    return {"seconds": ended - started, "first_token_s": first_token - started, "generated": generated,
            "steps": steps, "decode_s": ended - first_token}


@dataclass(frozen=True)
class EngineRunSizes:
    """The end-to-end section's workloads (the issue's; tests shrink them to run on the CPU)."""

    ttft_prompt: int = 8192
    decode_prompt: int = 128
    decode_tokens: int = 256
    num_requests: int = 256
    prompt_len: int = 200
    output_len: int = 180


def engine_figures(engine, vocab: int, weight_bytes: int, copy_gbs: float,
                   sizes: EngineRunSizes = EngineRunSizes()) -> dict:
    gen = torch.Generator().manual_seed(7)

    def prompt(length: int) -> list[int]:
        return torch.randint(10, vocab, (length,), generator=gen).tolist()

    def batch1_rate() -> float:
        """Batch-1 decode, median of 3: (tokens - 1) / (last - first)."""
        runs = [_run_requests(engine, [prompt(sizes.decode_prompt)], sizes.decode_tokens + 1) for _ in range(3)]
        return statistics.median(sizes.decode_tokens / r["decode_s"] for r in runs)

    out = {"load_seconds": round(engine.load_seconds, 2)}
    graphs = engine.runner.cuda_graphs
    if graphs is not None:
        out["cuda_graphs"] = {"sizes": len(graphs.sizes), "capture_seconds": round(graphs.capture_seconds, 2)}
    _run_requests(engine, [prompt(300) for _ in range(8)], 16)  # warm-up: prefill shapes, sampler
    # Time to first token, one 8k prompt (fresh tokens each run: no prefix-cache hits).
    ttfts = [_run_requests(engine, [prompt(sizes.ttft_prompt)], 1)["first_token_s"] for _ in range(3)]
    out["ttft_8k_s"] = round(statistics.median(ttfts), 4)
    rate = batch1_rate()
    runner = engine.runner
    kv_bytes_per_position = runner.kv_cache_bytes / (runner.num_blocks * runner.block_size)
    mean_context = sizes.decode_prompt + sizes.decode_tokens / 2
    floor_tok_s = copy_gbs * 1e9 / (weight_bytes + kv_bytes_per_position * mean_context)
    out["batch1_decode_tok_s"] = round(rate, 2)
    out["batch1_floor_tok_s"] = round(floor_tok_s, 1)
    out["batch1_fraction_of_floor"] = round(rate / floor_tok_s, 3)
    # The same runs with the other scheduling: what overlapping the host's work with the
    # device's buys (async scheduling is the engine's default on CUDA).
    chosen = engine.async_scheduling
    engine.async_scheduling = not chosen
    other = batch1_rate()
    profiles = {"async" if not chosen else "sync": decode_profile(engine, prompt(sizes.decode_prompt))}
    engine.async_scheduling = chosen
    profiles["async" if chosen else "sync"] = decode_profile(engine, prompt(sizes.decode_prompt))
    out["batch1_decode_profile"] = profiles
    out["async_scheduling"] = chosen
    out["batch1_decode_tok_s_other_scheduling"] = round(other, 2)
    # Throughput: 256 requests of 200 prompt / 180 output tokens, all submitted at once.
    _run_requests(engine, [prompt(sizes.prompt_len) for _ in range(64)], 8)  # warm-up at this batch shape
    runs = [_run_requests(engine, [prompt(sizes.prompt_len) for _ in range(sizes.num_requests)], sizes.output_len)
            for _ in range(2)]
    best = min(runs, key=lambda r: r["seconds"])
    total_tokens = sizes.num_requests * (sizes.prompt_len + sizes.output_len)
    out["throughput_256x200_180"] = {
        "seconds": round(best["seconds"], 3),
        "total_tok_s": round(total_tokens / best["seconds"], 1),
        "output_tok_s": round(sizes.num_requests * sizes.output_len / best["seconds"], 1),
        "steps": best["steps"],
        "all_runs_s": [round(r["seconds"], 3) for r in runs],
    }
    return out


def decode_profile(engine, prompt: list[int], steps: int = 24, top: int = 12) -> dict:
    """Where a batch-1 decode step's time goes: wall time per step, the device's busy time per
    step (the rest is the device waiting on the host), and the kernels (CPU ops without CUDA)
    taking the most time."""
    from torch.profiler import ProfilerActivity, profile

    from localllm import SamplingParams

    cuda = torch.cuda.is_available()
    engine.add_request(f"profile-{time.monotonic_ns()}", {"prompt_token_ids": prompt},
                       SamplingParams(temperature=0.0, max_tokens=steps + 8, ignore_eos=True, detokenize=False))
    for _ in range(4):  # the prefill and the first decode steps stay out of the window
        engine.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            engine.step()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
    while engine.has_unfinished_requests():
        engine.step()
    field = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, field, 0) > 0]
    busy_us = sum(getattr(e, field) for e in events)
    events.sort(key=lambda e: getattr(e, field), reverse=True)
    out = {"steps": steps, "wall_ms_per_step": round(wall * 1e3 / steps, 3)}
    if cuda:
        out["device_busy_ms_per_step"] = round(busy_us / 1e3 / steps, 3)
        out["device_busy_fraction"] = round(busy_us / 1e6 / wall, 3)
    out["top"] = [{"name": e.key[:80], "calls_per_step": round(e.count / steps, 2),
                   "us_per_step": round(getattr(e, field) / steps, 1),
                   "share": round(getattr(e, field) / busy_us, 3)} for e in events[:top]]
    return out


def end_to_end(copy_gbs: float, skip_hf: bool) -> dict:
    max_len = 8192 + 512
    config = llama3_8b_config(max_len)
    model = build_hf_model(config)
    params = dict(model.named_parameters())
    # Bytes a decode step must read: every weight but the embedding table (one row is read).
    weight_bytes = sum(p.numel() * p.element_size() for n, p in params.items() if "embed_tokens" not in n)
    out = {"model": "Llama-3-8B shape, random bf16 weights", "weight_bytes_per_token": weight_bytes}
    if not skip_hf:
        try:
            out["transformers"] = hf_figures(model, config.vocab_size)
        except Exception:
            out["transformers_error"] = traceback.format_exc()[-2000:]
        torch.cuda.empty_cache()
    engine = build_engine(config, model, max_len)
    del model, params
    gc.collect()
    torch.cuda.empty_cache()
    out["localllm"] = engine_figures(engine, config.vocab_size, weight_bytes, copy_gbs)
    hf = out.get("transformers")
    if hf:
        ours = out["localllm"]
        out["ratios_vs_transformers"] = {
            "batch1_decode": round(ours["batch1_decode_tok_s"] / hf["batch1_decode_tok_s"], 2),
            "throughput": round(ours["throughput_256x200_180"]["total_tok_s"]
                                / hf["throughput_256x200_180"]["total_tok_s"], 2),
            "ttft_8k_speedup": round(hf["ttft_8k_s"] / ours["ttft_8k_s"], 2),
        }
    return out


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=None)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--sections", default="ceilings,decode_attention,prefill_attention,e2e,w4a16,prefill_sweep")
    args = parser.parse_args()
    sections = args.sections.split(",")
    props = torch.cuda.get_device_properties(0)
    card = props.name
    slug = card.lower().replace("nvidia ", "").replace(" ", "-")
    output = args.output or os.path.join(os.path.dirname(__file__), f"results-{slug}.json")
    import triton
    import transformers

    RESULTS["machine"] = {
        "gpu": card, "sms": props.multi_processor_count, "memory_GiB": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS["command"] = "PYTHONPATH=. python3 " + " ".join(sys.argv)
    copy_gbs = 3000.0
    failed = False
    for name in sections:
        started = time.monotonic()
        try:
            if name == "ceilings":
                RESULTS["ceilings"] = ceilings()
                copy_gbs = RESULTS["ceilings"]["copy_bandwidth_GBps"]
            elif name == "decode_attention":
                RESULTS["decode_attention"] = decode_attention(copy_gbs)
            elif name == "prefill_attention":
                RESULTS["prefill_attention"] = prefill_attention()
            elif name == "prefill_sweep":
                RESULTS["prefill_sweep"] = prefill_sweep()
            elif name == "e2e":
                RESULTS["end_to_end"] = end_to_end(copy_gbs, args.skip_hf)
            elif name == "w4a16":  # W4A16 kernel vs fp16 matmul, AWQ decode (benchmarks/bench_w4a16.py)
                import bench_w4a16

                RESULTS["w4a16"] = bench_w4a16.section(bench_ms, copy_gbs)
            else:
                raise ValueError(f"unknown section {name!r}")
        except Exception:
            failed = True
            RESULTS[f"{name}_error"] = traceback.format_exc()[-3000:]
            print(RESULTS[f"{name}_error"], file=sys.stderr)
        print(f"[{name}] {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        gc.collect()
        torch.cuda.empty_cache()
        _save(output)
    print(json.dumps(RESULTS, indent=1))
    print(f"wrote {output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
