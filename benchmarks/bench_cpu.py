"""CPU benchmark of the engine core against its peers, in one run on one machine.

    python benchmarks/bench_cpu.py [--model smollm2] [--output-len 128] [--concurrency 16]

Measures, on the same GGUF and prompt:
  - localllm single-stream decode tok/s (greedy, EOS ignored)
  - Hugging Face transformers `generate` decode tok/s (same weights, dequantized, fp32)
  - llama.cpp through llama-cpp-python decode tok/s (when installed)
  - localllm with N concurrent requests: aggregate decode tok/s
  - start-up to first token in a fresh process (run twice; the second run is reported)
Decode rates exclude the prompt: (tokens - 1) / (time of last token - time of first token).
Prints a Markdown table and writes JSON next to it with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def machine_info() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def bench_localllm(model: str, output_len: int, concurrency: int, dtype: str) -> dict:
    import localllm
    from localllm import LLM, SamplingParams
    from localllm.engine.llm_engine import LLMEngine
    from localllm.sampling_params import RequestOutputKind

    llm = LLM(model=model, dtype=dtype, max_model_len=2048)
    engine: LLMEngine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    llm.generate([PROMPT], params)  # warm-up

    def decode_rate(num_requests: int) -> float:
        p = params.clone()
        p.output_kind = RequestOutputKind.DELTA
        for i in range(num_requests):
            engine.add_request(f"bench-{num_requests}-{i}", PROMPT + f" ({i})", p)
        # The clock starts once every request has its first token: prefill is not decode.
        started: set[str] = set()
        first = None
        generated = 0
        while engine.has_unfinished_requests():
            outputs = engine.step()
            if first is None:
                started.update(o.request_id for o in outputs if any(c.token_ids for c in o.outputs))
                if len(started) == num_requests:
                    first = time.perf_counter()
                continue
            generated += sum(len(c.token_ids) for o in outputs for c in o.outputs)
        return generated / (time.perf_counter() - first)

    single = decode_rate(1)
    batched = decode_rate(concurrency)
    return {
        "version": localllm.__version__,
        "dtype": str(engine.runner.dtype),
        "quantization": engine.runner.quantization,
        "single": single,
        "concurrent": batched,
    }


def bench_transformers(gguf_path: str, output_len: int) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, do_sample=False)
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=1, do_sample=False)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=output_len, min_new_tokens=output_len, do_sample=False)
        total = time.perf_counter() - start
    return {"version": transformers.__version__, "single": (output_len - 1) / (total - prefill)}


def bench_llama_cpp(gguf_path: str, output_len: int) -> dict | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(model_path=gguf_path, n_ctx=2048, n_threads=os.cpu_count(), verbose=False)
    llm(PROMPT, max_tokens=4)
    first = None
    count = 0
    for _ in llm(PROMPT, max_tokens=output_len, temperature=0.0, stream=True):
        count += 1
        if first is None:
            first = time.perf_counter()
    total = time.perf_counter() - first
    return {"version": llama_cpp.__version__, "single": (count - 1) / total}


def startup_to_first_token(model: str) -> float:
    code = (
        "import time; t=time.perf_counter();"
        "from localllm import LLM, SamplingParams;"
        f"llm=LLM(model={model!r});"
        "llm.generate(['Hi'], SamplingParams(max_tokens=1));"
        "print(time.perf_counter()-t)"
    )
    times = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", default="benchmarks/results-cpu.json")
    parser.add_argument("--skip", nargs="*", default=[], choices=["hf", "llama.cpp", "startup"])
    args = parser.parse_args()

    from localllm.hub import resolve_model

    gguf_path = resolve_model(args.model)
    results = {"machine": machine_info(), "command": " ".join(sys.argv), "model": gguf_path}
    results["localllm"] = bench_localllm(args.model, args.output_len, args.concurrency, args.dtype)
    if "hf" not in args.skip and gguf_path.endswith(".gguf"):
        results["transformers"] = bench_transformers(gguf_path, args.output_len)
    if "llama.cpp" not in args.skip and gguf_path.endswith(".gguf"):
        results["llama.cpp"] = bench_llama_cpp(gguf_path, args.output_len)
    if "startup" not in args.skip:
        results["startup_s"] = startup_to_first_token(args.model)

    ours = results["localllm"]
    rows = [("localllm, 1 stream", ours["single"]), (f"localllm, {args.concurrency} concurrent (aggregate)", ours["concurrent"])]
    if results.get("transformers"):
        rows.append(("transformers generate, 1 stream", results["transformers"]["single"]))
    if results.get("llama.cpp"):
        rows.append(("llama.cpp (llama-cpp-python), 1 stream", results["llama.cpp"]["single"]))
    print(f"\nmachine: {results['machine']['cpu']}, {results['machine']['cores']} cores; model {os.path.basename(gguf_path)}")
    print("| engine | decode tok/s |\n|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} |")
    if results.get("transformers"):
        print(f"localllm / transformers: {ours['single'] / results['transformers']['single']:.2f}x")
    if results.get("llama.cpp"):
        print(f"localllm / llama.cpp: {ours['single'] / results['llama.cpp']['single']:.2f}x")
    print(f"{args.concurrency} concurrent / single stream: {ours['concurrent'] / ours['single']:.2f}x")
    if "startup_s" in results:
        print(f"start-up to first token (second run, fresh process): {results['startup_s']:.2f} s")
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
