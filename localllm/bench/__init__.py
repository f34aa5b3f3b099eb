"""`localllm bench`: figures measured the way vLLM and llama.cpp publish theirs, peers side by side.

  workload.py   deterministic prompts (a seed gives the same prompts): token ids or text
  stats.py      mean / p50 / p90 / p99 of a list of timings
  machine.py    the machine (CPU, cores, GPU and driver), software versions, memory bandwidth
  record.py     the JSON record every result is written as (machine, versions, command, workload)
  floor.py      the bandwidth floor of decode: bytes read per token / memory bandwidth
  backends.py   one interface over the engines: run a batch of token prompts, time every token
  local_backend.py, hf_backend.py, llamacpp_backend.py   localllm, transformers, llama.cpp
  offline.py    `bench throughput` and `bench latency` over any backend, ratios between them
  serve_client.py  `bench serve`: streaming OpenAI clients at a concurrency or a Poisson rate
  plot.py       throughput and TTFT percentiles against concurrency, as a PNG (matplotlib)
  report.py     the tables printed on stdout

Nothing here imports torch or the engine at import time; the backends do so when loaded.
"""
