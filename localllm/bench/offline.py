"""`bench throughput` and `bench latency`: one workload, run by localllm and then by each peer in
the same process, on the same token ids.

throughput: every prompt submitted at once (EOS ignored): requests/s, input and output tokens/s.
latency:    batches of `batch_size` prompts, one after another: time per batch, time to first
            token, time per output token, memory, and the fraction of the decode bandwidth floor.
"""

from __future__ import annotations

import gc
from typing import Callable

from localllm.bench.backends import PEERS, Backend, BatchTiming, PeerUnavailable, load_peer
from localllm.bench.floor import decode_floor
from localllm.bench.machine import measure_memory_bandwidth, process_memory, reset_cuda_peak
from localllm.bench.record import new_record
from localllm.bench.stats import summarize
from localllm.bench.workload import Workload

OURS = "localllm"
WARMUP_PROMPTS = 2


def throughput_figures(backend: Backend, prompts: list[list[int]], output_len: int) -> dict:
    timing = backend.run(prompts, output_len)
    seconds = timing.seconds
    return {
        "seconds": seconds,
        "num_requests": len(prompts),
        "num_prompt_tokens": timing.num_prompt_tokens,
        "num_output_tokens": timing.num_output_tokens,
        "requests_per_s": len(prompts) / seconds,
        "input_tok_s": timing.num_prompt_tokens / seconds,
        "output_tok_s": timing.num_output_tokens / seconds,
        "total_tok_s": (timing.num_prompt_tokens + timing.num_output_tokens) / seconds,
    }


def latency_figures(backend: Backend, batches: list[list[list[int]]], output_len: int, bandwidth: dict) -> dict:
    timings: list[BatchTiming] = [backend.run(batch, output_len) for batch in batches]
    tpots = [t.seconds_per_output_token for t in timings if t.seconds_per_output_token]
    batch_size = len(batches[0])
    out = {
        "iterations": len(timings),
        "latency_s": summarize(t.seconds for t in timings),
        "ttft_s": summarize(t.ttft for t in timings),
        "tpot_s": summarize(tpots),
    }
    if tpots:
        tpot = out["tpot_s"]["mean"]
        out["decode_tok_s_per_seq"] = 1 / tpot
        out["decode_tok_s_total"] = batch_size / tpot
        mean_context = len(batches[0][0]) + output_len / 2
        out["floor"] = decode_floor(backend.decode_bytes(), bandwidth, batch_size, mean_context, tpot)
    return out


# A ratio above 1 means localllm is faster: rates are ours / theirs, times theirs / ours.
RATES = {"throughput": ("requests_per_s", "output_tok_s", "total_tok_s"), "latency": ("decode_tok_s_per_seq",)}
TIMES = {"throughput": (), "latency": ("latency_s", "ttft_s")}


def speedups(kind: str, results: dict) -> dict:
    ours = results[OURS]
    out = {}
    for peer, theirs in results.items():
        if peer == OURS or "skipped" in theirs:
            continue
        ratio = {key: ours[key] / theirs[key] for key in RATES[kind] if ours.get(key) and theirs.get(key)}
        ratio.update({key: theirs[key]["mean"] / ours[key]["mean"] for key in TIMES[kind]
                      if ours[key]["mean"] and theirs[key]["mean"]})
        out[f"{OURS}/{peer}"] = ratio
    return out


def _measure(backend: Backend, work: Callable[[Backend], dict], memory_before: dict) -> dict:
    figures = work(backend)
    figures["engine"] = backend.describe()
    after = process_memory(backend.device)
    growth = after["rss_bytes"] - memory_before["rss_bytes"] if after["rss_bytes"] and memory_before["rss_bytes"] else None
    figures["memory"] = {**after, "rss_growth_bytes": growth}
    return figures


def run_offline(kind: str, model: str, workload: Workload, *, peers: list[str], engine_options: dict,
                batch_size: int = 1, num_iters: int = 1, num_iters_warmup: int = 1,
                log: Callable[[str], None] = print, argv: list[str] | None = None) -> dict:
    """Run `kind` ("throughput" or "latency") and return its record. Raises LocalLLMError (and
    ValueError) on bad input; a peer that cannot run is recorded as skipped, with the reason."""
    from localllm.bench.local_backend import LocalBackend

    for peer in peers:
        if peer not in PEERS:
            raise ValueError(f"--vs must be one of {', '.join(PEERS)}, got {peer!r}")
    log(f"loading {model} ...")
    memory_before = process_memory("cpu")
    local = LocalBackend(model, **engine_options)
    reset_cuda_peak(local.device)
    if workload.input_len + workload.output_len > local.max_model_len:
        raise ValueError(f"input-len {workload.input_len} + output-len {workload.output_len} is more than the "
                         f"model's context ({local.max_model_len} tokens; --max-model-len sets it)")
    prompts = workload.token_prompts(local.tokenizer)
    warmup = Workload(WARMUP_PROMPTS, workload.input_len, min(workload.output_len, 8), workload.seed)
    warmup_prompts = warmup.token_prompts(local.tokenizer, start=workload.num_prompts)
    bandwidth = measure_memory_bandwidth(local.device) if kind == "latency" else None
    model_path = local.model_path

    if kind == "throughput":
        def work(backend: Backend) -> dict:
            backend.run(warmup_prompts, warmup.output_len)
            return throughput_figures(backend, prompts, workload.output_len)
    else:
        batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]

        def work(backend: Backend) -> dict:
            for batch in batches[:num_iters_warmup]:
                backend.run(batch, workload.output_len)
            return latency_figures(backend, batches[num_iters_warmup:], workload.output_len, bandwidth)

    log(f"running localllm: {_describe(kind, workload, batch_size, num_iters)}")
    results = {OURS: _measure(local, work, memory_before)}
    max_model_len, run_device = local.max_model_len, local.device
    max_batch_size = local.engine.config.scheduler.max_num_seqs
    local.close()
    del local
    gc.collect()
    for peer in peers:
        if kind == "latency" and peer == "llama.cpp" and batch_size > 1:
            results[peer] = {"skipped": "llama.cpp: llama-cpp-python runs one sequence at a time; compare "
                                        "latency with it at --batch-size 1: skipped"}
            log(results[peer]["skipped"])
            continue
        memory_before = process_memory("cpu")
        reset_cuda_peak(run_device)
        try:
            log(f"loading {peer} ...")
            backend = load_peer(peer, model_path, device=run_device, max_model_len=max_model_len,
                                max_batch_size=max_batch_size)
        except PeerUnavailable as e:
            results[peer] = {"skipped": str(e)}
            log(str(e))
            continue
        log(f"running {peer} ...")
        try:
            results[peer] = _measure(backend, work, memory_before)
        finally:
            backend.close()
            del backend
            gc.collect()

    workload_fields = workload.as_dict()
    if kind == "latency":
        workload_fields.update(batch_size=batch_size, num_iters=num_iters, num_iters_warmup=num_iters_warmup)
    return new_record(kind, workload_fields, argv, model=model, model_path=model_path, results=results,
                      ratios=speedups(kind, results), memory_bandwidth=bandwidth)


def _describe(kind: str, workload: Workload, batch_size: int, num_iters: int) -> str:
    if kind == "throughput":
        return f"{workload.num_prompts} prompts x {workload.input_len} tokens in, {workload.output_len} out, all at once"
    return (f"{num_iters} batches of {batch_size} x {workload.input_len} tokens in, {workload.output_len} out "
            f"(after warm-up)")
