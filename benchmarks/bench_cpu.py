"""CPU benchmark of the engine core against its peers, in one run on one machine: a thin caller
of `localllm bench latency` (localllm/bench), plus start-up to first token in a fresh process.

    python benchmarks/bench_cpu.py [--model smollm2] [--input-len 16] [--output-len 128] [--concurrency 16]

Measures, on the same GGUF and the same token ids (greedy, EOS ignored):
  - localllm single-stream decode tok/s, and aggregate decode tok/s with N concurrent requests
  - Hugging Face transformers `generate` decode tok/s (same weights, dequantized, fp32)
  - llama.cpp through llama-cpp-python decode tok/s (when installed)
  - start-up to first token in a fresh process (run twice; the second run is reported)
Decode rates exclude the prompt: (tokens - 1) / (time of last token - time of first token).
Prints a Markdown table and writes JSON with the machine, versions and the full records.
The same figures, one command at a time: `localllm bench latency MODEL --vs hf --vs llama.cpp`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from localllm.bench.offline import run_offline
from localllm.bench.workload import Workload


def startup_to_first_token(model: str) -> float:
    code = (
        "from localllm import LLM, SamplingParams;"
        f"llm=LLM(model={model!r});"
        "llm.generate(['Hi'], SamplingParams(max_tokens=1))"
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
    parser.add_argument("--input-len", type=int, default=16)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--num-iters", type=int, default=3)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", default="benchmarks/results-cpu.json")
    parser.add_argument("--skip", nargs="*", default=[], choices=["hf", "llama.cpp", "startup"])
    args = parser.parse_args()

    def latency(batch_size: int, peers: list[str]) -> dict:
        workload = Workload(batch_size * (args.num_iters + 1), args.input_len, args.output_len)
        return run_offline("latency", args.model, workload, peers=peers, batch_size=batch_size, num_iters=args.num_iters,
                           engine_options={"dtype": args.dtype, "max_model_len": 2048, "max_num_seqs": max(64, batch_size)},
                           log=lambda m: print(m, file=sys.stderr))

    single = latency(1, [p for p in ("hf", "llama.cpp") if p not in args.skip])
    batched = latency(args.concurrency, [])
    results = {"command": " ".join(sys.argv), "single_stream": single, "concurrent": batched}
    if "startup" not in args.skip:
        results["startup_s"] = startup_to_first_token(args.model)

    rate = {name: f.get("decode_tok_s_per_seq") for name, f in single["results"].items() if "skipped" not in f}
    ours = rate["localllm"]
    aggregate = batched["results"]["localllm"]["decode_tok_s_total"]
    rows = [("localllm, 1 stream", ours), (f"localllm, {args.concurrency} concurrent (aggregate)", aggregate)]
    rows += [(f"{name}, 1 stream", value) for name, value in rate.items() if name != "localllm"]
    machine = single["machine"]
    print(f"\nmachine: {machine['cpu']}, {machine['cores']} cores, load average {machine['load_average']}; "
          f"model {single['model_path']}")
    print("| engine | decode tok/s |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.1f} |")
    for name, value in rate.items():
        if name != "localllm":
            print(f"localllm / {name}: {ours / value:.2f}x")
    for name, figures in single["results"].items():
        if "skipped" in figures:
            print(figures["skipped"])
    print(f"{args.concurrency} concurrent / single stream: {aggregate / ours:.2f}x")
    if "startup_s" in results:
        print(f"start-up to first token (second run, fresh process): {results['startup_s']:.2f} s")
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
