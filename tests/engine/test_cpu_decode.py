"""The CPU decode fast path (localllm/worker/cpu_decode.py) against the module path it replaces:
the same tokens and the same logprobs, bit for bit, on SmolLM2's int4 GGUF and on tiny int4
models with every bias the fast path handles; and the cases it must leave to the modules."""

from __future__ import annotations

import pytest
import torch

from localllm import SamplingParams
from localllm.kernels import cpu_native, cpu_qgemm, ops
from localllm.layers.int4_cpu_linear import int4_kernel_available
from localllm.worker.cpu_decode import CPUDecodePath
from tests.models.tiny_models import save_tiny_model

pytestmark = pytest.mark.skipif(
    not int4_kernel_available() or cpu_native.library() is None,
    reason="needs torch's int4 CPU kernel and a C compiler for the CPU kernels",
)


class CountingPath:
    """Wraps a runner's fast path: counts the steps it ran."""

    def __init__(self, path: CPUDecodePath) -> None:
        self.path, self.steps = path, 0

    def applies(self, metadata, kv_caches) -> bool:
        return self.path.applies(metadata, kv_caches)

    def forward(self, *args):
        self.steps += 1
        return self.path.forward(*args)


def run_both(llm, prompts, params):
    """(outputs with the fast path, outputs through the modules, fast-path steps taken)."""
    runner = llm.engine.runner
    assert runner.cpu_decode is not None, "the fast path should apply to this model"
    counting = CountingPath(runner.cpu_decode)
    runner.cpu_decode = counting
    try:
        fast = llm.generate(prompts, params)
        runner.cpu_decode = None
        modules = llm.generate(prompts, params)
    finally:
        runner.cpu_decode = counting.path
    return fast, modules, counting.steps


def assert_same_outputs(fast, modules):
    for a, b in zip(fast, modules, strict=True):
        for x, y in zip(a.outputs, b.outputs, strict=True):
            assert x.token_ids == y.token_ids
            for lp_x, lp_y in zip(x.logprobs, y.logprobs, strict=True):
                # every reported logprob, not just the pick: the logits are the same bits
                assert {t: e.logprob for t, e in lp_x.items()} == {t: e.logprob for t, e in lp_y.items()}


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "float32"])
def test_smollm2_int4_fast_path_gives_the_modules_bits(smollm2_gguf, make_llm, kv_cache_dtype):
    """With the int4 path's default bfloat16 KV cache (the fast path rounds k and v as the modules'
    store does) and with a float32 one."""
    llm = make_llm(smollm2_gguf, quantization="auto", max_model_len=512, max_num_seqs=8, enable_prefix_caching=False,
                   kv_cache_dtype=kv_cache_dtype)
    runner = llm.engine.runner
    assert runner.quantization == "int4"
    expected = torch.bfloat16 if kv_cache_dtype == "auto" else torch.float32
    assert runner.kv_cache_dtype == expected and all(c.dtype == expected for c in runner.kv_caches)
    prompts = [{"prompt_token_ids": list(range(100, 100 + n))} for n in (3, 17, 40, 90)]
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, logprobs=5)
    fast, modules, steps = run_both(llm, prompts, params)
    assert steps >= 23  # every decode step of the batch went through the fast path
    assert_same_outputs(fast, modules)


TINY = {
    "llama": dict(),
    "llama-biases": dict(attention_bias=True, mlp_bias=True),  # bias on qkv, o, gate_up and down
}


@pytest.mark.parametrize("kernel", ["qgemm", "torch"])
@pytest.mark.parametrize("variant", sorted(TINY))
def test_tiny_int4_fast_path_gives_the_modules_bits(variant, kernel, tmp_path, make_llm, monkeypatch):
    """With either matmul kernel: ours (float32 out) where the CPU has AVX512-BF16, torch's
    (bfloat16 out) elsewhere."""
    from transformers import LlamaConfig

    if kernel == "qgemm" and not cpu_qgemm.available():
        pytest.skip("no AVX512-BF16 kernels on this CPU")
    if kernel == "torch":
        monkeypatch.setattr(cpu_qgemm, "available", lambda: False)

    config = LlamaConfig(
        architectures=["LlamaForCausalLM"], vocab_size=256, hidden_size=64, intermediate_size=128,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rms_norm_eps=1e-5, eos_token_id=1, bos_token_id=2, **TINY[variant],
    )
    save_tiny_model(config, tmp_path, seed=7)
    llm = make_llm(str(tmp_path), quantization="int4", block_size=4, max_num_seqs=8, enable_prefix_caching=False)
    prompts = [{"prompt_token_ids": [5 + (i * 7 + j) % 200 for j in range(n)]} for i, n in enumerate((1, 6, 13, 30))]
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, logprobs=4)
    linear = llm.engine.runner.model.model.layers[0].mlp.down_proj
    assert (linear.packed is not None) == (kernel == "qgemm")
    fast, modules, steps = run_both(llm, prompts, params)
    assert steps >= 19
    assert_same_outputs(fast, modules)


def test_models_the_fast_path_does_not_cover_run_the_modules(tmp_path, make_llm):
    from transformers import Qwen3Config

    config = Qwen3Config(
        architectures=["Qwen3ForCausalLM"], vocab_size=256, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        max_position_embeddings=512, rms_norm_eps=1e-5, eos_token_id=1, bos_token_id=2,
    )
    save_tiny_model(config, tmp_path, seed=3)
    assert make_llm(str(tmp_path), quantization="int4").engine.runner.cpu_decode is None  # q/k norms
    assert make_llm(str(tmp_path)).engine.runner.cpu_decode is None  # float32 linears


def test_the_reference_backend_turns_the_fast_path_off(smollm2_gguf, make_llm):
    llm = make_llm(smollm2_gguf, quantization="auto", max_model_len=256)
    runner = llm.engine.runner
    counting = CountingPath(runner.cpu_decode)
    runner.cpu_decode = counting
    try:
        with ops.use_backend("reference"):
            llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(max_tokens=4, ignore_eos=True))
    finally:
        runner.cpu_decode = counting.path
    assert counting.steps == 0


def test_bf16_rounding_matches_torch():
    """The kernels' float32 -> bfloat16 rounding is torch's (to nearest, ties to even): every
    bfloat16 value, and float32 values exactly half-way between two, and just either side."""
    lib = cpu_native.library()
    base = torch.arange(1 << 16, dtype=torch.int64).to(torch.int32) << 16  # every bfloat16 pattern
    values = torch.cat([(base | bits).view(torch.float32) for bits in (0, 0x7FFF, 0x8000, 0x8001)])
    values = values[torch.isfinite(values)].contiguous()
    out = torch.empty(values.shape, dtype=torch.bfloat16)
    lib.round_to_bf16(values.data_ptr(), out.data_ptr(), values.numel())
    assert torch.equal(out.view(torch.int16), values.to(torch.bfloat16).view(torch.int16))


def test_without_the_c_kernels_everything_runs_on_torch(smollm2_gguf, make_llm, monkeypatch):
    """No C compiler (or LOCALLLM_CPU_KERNELS=0): no fast path, the ops take the torch reference,
    and the answers are still the int4 model's."""
    reference_llm = make_llm(smollm2_gguf, quantization="auto", max_model_len=256, enable_prefix_caching=False)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    prompt = [{"prompt_token_ids": list(range(40, 60))}]
    with_kernels = reference_llm.generate(prompt, params)[0].outputs[0].token_ids
    monkeypatch.setattr(cpu_native, "library", lambda: None)
    llm = make_llm(smollm2_gguf, quantization="auto", max_model_len=256, enable_prefix_caching=False)
    assert llm.engine.runner.cpu_decode is None
    assert not cpu_native.usable(torch.zeros(2))
    without = llm.generate(prompt, params)[0].outputs[0].token_ids
    assert len(without) == 8
    # Same int4 weights, float32 sums in another order: the greedy tokens agree on this prompt.
    assert without == with_kernels
