"""The whole engine on the Triton kernels (interpreted on the CPU, compiled on a GPU) gives the
greedy answers of the same engine on the torch reference kernels: tiny random-weight Llama
(head dim 16) and Qwen3 (q/k norm, head dim 32) checkpoints, with batching, chunked prefill over
a cached context and prefix-cache hits. This is the CI check that ops.py routes every op to a
kernel with the reference's semantics."""

from __future__ import annotations

import pytest

from localllm import LLM, SamplingParams
from localllm.kernels import ops
from tests.engine.backend_parity import compare_greedy
from tests.engine.conftest import parity_options, tiny_configs
from tests.kernels.conftest import KERNEL_DEVICE, requires_triton
from tests.models.tiny_models import save_tiny_model

pytestmark = requires_triton

_SHARED = [5, 9, 14, 3, 7, 11, 30, 42, 8, 19, 23, 4, 60, 71, 6, 2, 90, 15]


def _prompts() -> list:
    return [
        {"prompt_token_ids": _SHARED + [100, 101]},
        {"prompt_token_ids": [7]},
        {"prompt_token_ids": _SHARED + [120, 5, 6, 200, 33]},
        {"prompt_token_ids": list(range(20, 61))},
        {"prompt_token_ids": [3, 4]},
    ]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_engine_on_triton_kernels_matches_reference(tmp_path, arch):
    save_tiny_model(tiny_configs()[arch], tmp_path, seed=11)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=2)
    options = {**parity_options(), "device": KERNEL_DEVICE, "max_model_len": 128, "kv_cache_blocks": 64,
               "max_num_batched_tokens": 24, "block_size": 16}
    results = {}
    for backend in ("reference", "triton"):
        with ops.use_backend(backend):
            llm = LLM(model=str(tmp_path), enforce_eager=True, **options)
            results[backend] = llm.generate(_prompts(), params)
            if backend == "triton":
                assert llm.engine.scheduler.kv_cache_manager.prefix_cache_hits > 0
    compare_greedy(results["reference"], results["triton"], tolerance=1e-3, min_exact_fraction=0.8)
