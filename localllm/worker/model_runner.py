"""Batch -> tensors -> forward -> sample.

The step's tokens are packed ragged (no padding to the longest sequence): one row per token,
with an AttentionMetadata describing where each sequence's tokens start and which cache slots
they fill. Logits are computed only for rows that sample (the last token of a sequence that
catches up with its known tokens) and for prompt positions whose logprobs were asked for.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from localllm.kernels import ops
from localllm.config import CacheConfig, ModelConfig, SchedulerConfig
from localllm.engine.request import Request
from localllm.layers.int4_cpu_linear import convert_linears_to_int4, int4_kernel_available
from localllm.layers.int8_cpu_lm_head import convert_lm_head_to_int8
from localllm.forward_context import AttentionMetadata, ForwardContext, set_forward_context
from localllm.models.loader import Checkpoint
from localllm.models.registry import build_model, kv_cache_spec
from localllm.outputs import ModelRunnerOutput, SchedulerOutput, TokenLogprobs
from localllm.worker.kv_cache import allocate_kv_caches, choose_num_blocks, kv_bytes_per_block
from localllm.worker.cpu_decode import CPUDecodePath
from localllm.worker.cuda_graph import DecodeCUDAGraphs
from localllm.worker.sampler import (HostSamplerOutput, Sampler, SamplingBatch, compute_prompt_logprobs,
                                     seeded_generator)
from localllm.worker.step_inputs import build_step_inputs
from localllm.worker.structured_output import StructuredOutputManager
from localllm.worker.transfer import to_device


logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA device")
    return device


# GGUF types whose weights are 4-bit groups already: int4 on the CPU loses nothing more.
_FOUR_BIT_GGUF_TYPES = {"Q4_0", "Q4_1", "Q4_K"}


def resolve_quantization(requested: str | None, checkpoint: Checkpoint, device: torch.device) -> str | None:
    if requested is None:
        return None
    if requested in ("nf4", "int8"):  # bitsandbytes, on any device it supports (the CPU included)
        return requested
    if requested == "auto":
        four_bit = checkpoint.weight_quantization in _FOUR_BIT_GGUF_TYPES
        return "int4" if four_bit and device.type == "cpu" and int4_kernel_available() else None
    if device.type != "cpu":
        raise ValueError(f"quantization {requested!r} runs on the CPU only in this version")
    if not int4_kernel_available():
        raise ValueError("this torch build has no int4 CPU kernel (torch.ops.aten._weight_int4pack_mm_for_cpu)")
    return requested


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_kv_cache_dtype(name: str, model_dtype: torch.dtype, quantization: str | None,
                           device: torch.device) -> torch.dtype:
    """CacheConfig.kv_cache_dtype -> the cache's dtype. "auto" is the model's, except bfloat16 for a
    CPU model on int4 groups. Another dtype than the model's is a CPU float32 model's bfloat16
    (the CPU kernels read it; the GPU kernels read the model's dtype only)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cpu" and quantization == "int4" else model_dtype
    dtype = _DTYPES[name]
    if dtype != model_dtype and not (device.type == "cpu" and model_dtype == torch.float32 and dtype == torch.bfloat16):
        raise ValueError(f"kv_cache_dtype {name!r} with a {str(model_dtype).removeprefix('torch.')} model on "
                         f"{device.type}: only the model's dtype, or bfloat16 for a float32 model on the CPU")
    return dtype


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


@dataclass
class LaunchedStep:
    """A step queued on the device and not yet collected."""

    requests: list[Request]
    sample_requests: list[Request]
    sampled: torch.Tensor | None  # int64[len(sample_requests)], on the device
    prompt_logprobs: dict[str, list[TokenLogprobs | None]]
    host_output: HostSamplerOutput | None = None

    @property
    def sample_row_of(self) -> dict[str, int]:
        return {r.request_id: i for i, r in enumerate(self.sample_requests)}


class ModelRunner:
    def __init__(
        self,
        model_config: ModelConfig,
        cache_config: CacheConfig,
        scheduler_config: SchedulerConfig,
        checkpoint: Checkpoint,
    ) -> None:
        self.device = resolve_device(model_config.device)
        self.dtype = resolve_dtype(model_config.dtype, self.device)
        self.block_size = cache_config.block_size
        torch.manual_seed(model_config.seed)

        self.model = build_model(checkpoint.hf_config, self.dtype, self.device)
        self.model.load_weights(checkpoint.weights())
        self.model.eval()
        self.quantization = resolve_quantization(model_config.quantization, checkpoint, self.device)
        if self.quantization == "int4":
            # 4-bit bodies, an 8-bit head: the layout of a llama.cpp Q4 file (token_embd in Q8_0).
            convert_linears_to_int4(self.model)
            convert_lm_head_to_int8(self.model)
        elif self.quantization in ("nf4", "int8"):
            from localllm.layers.bnb_linear import convert_linears_to_bnb

            convert_linears_to_bnb(self.model, self.quantization)
        # Decode steps of an int4 model skip the modules' Python (same kernels, same bits).
        self.cpu_decode = CPUDecodePath.build(self.model) if self.quantization == "int4" else None

        num_layers, num_kv_heads, head_dim = kv_cache_spec(checkpoint.hf_config)
        self.kv_cache_dtype = resolve_kv_cache_dtype(cache_config.kv_cache_dtype, self.dtype, self.quantization,
                                                     self.device)
        bytes_per_block = kv_bytes_per_block(num_layers, num_kv_heads, head_dim, self.block_size, self.kv_cache_dtype)
        max_useful_blocks = scheduler_config.max_num_seqs * -(-scheduler_config.max_model_len // self.block_size)
        hidden = checkpoint.hf_config.hidden_size
        vocab = checkpoint.hf_config.vocab_size
        activation_reserve = scheduler_config.max_num_batched_tokens * (hidden * 64 + vocab * 4) + (1 << 30)
        self.num_blocks = choose_num_blocks(
            cache_config, bytes_per_block, self.device, max_useful_blocks, activation_reserve
        )
        self.kv_cache_bytes = self.num_blocks * bytes_per_block
        self.kv_caches = allocate_kv_caches(
            num_layers, self.num_blocks, self.block_size, num_kv_heads, head_dim, self.kv_cache_dtype, self.device
        )
        self.sampler = Sampler()
        self.generators: dict[str, torch.Generator] = {}
        self.structured_output = StructuredOutputManager(
            checkpoint.tokenizer, checkpoint.hf_config.vocab_size, checkpoint.eos_token_ids
        )
        self.cuda_graphs: DecodeCUDAGraphs | None = None
        if self.device.type == "cuda" and ops.uses_triton(self.device):
            self._warm_up(model_config, scheduler_config)

    @torch.inference_mode()
    def _warm_up(self, model_config: ModelConfig, scheduler_config: SchedulerConfig) -> None:
        """Compile the prefill kernels on a dummy chunk, then capture the decode graphs, so the
        first request pays neither. The dummy chunk writes block 0, which no request owns yet."""
        started = time.monotonic()
        num_tokens = min(self.block_size, scheduler_config.max_model_len)
        ids = torch.zeros(num_tokens, dtype=torch.int64, device=self.device)
        positions = torch.arange(num_tokens, dtype=torch.int64, device=self.device)
        metadata = AttentionMetadata(
            num_seqs=1,
            num_tokens=num_tokens,
            query_start_loc=torch.tensor([0, num_tokens], dtype=torch.int32, device=self.device),
            seq_lens=torch.tensor([num_tokens], dtype=torch.int32, device=self.device),
            block_table=torch.zeros(1, 1, dtype=torch.int32, device=self.device),
            slot_mapping=positions.clone(),
            max_query_len=num_tokens,
            max_seq_len=num_tokens,
            query_start_loc_cpu=[0, num_tokens],
            seq_lens_cpu=[num_tokens],
        )
        with set_forward_context(ForwardContext(attn_metadata=metadata, kv_caches=self.kv_caches)):
            hidden = self.model(ids, positions)
        self.model.compute_logits(hidden[-1:])
        torch.cuda.synchronize(self.device)
        compile_seconds = time.monotonic() - started
        if model_config.enforce_eager:
            logger.info("warm-up (kernel compilation) took %.1f s; CUDA graphs off (enforce_eager)", compile_seconds)
            return
        max_batch = min(model_config.max_cudagraph_batch_size or scheduler_config.max_num_seqs,
                        scheduler_config.max_num_seqs)
        self.cuda_graphs = DecodeCUDAGraphs(
            self.model, self.kv_caches, max_batch, scheduler_config.max_model_len, self.block_size, self.device
        )
        seconds = self.cuda_graphs.capture()
        logger.info(
            "warm-up: kernels compiled in %.1f s; %d CUDA graphs (decode batches up to %d) captured in %.1f s",
            compile_seconds, len(self.cuda_graphs.sizes), self.cuda_graphs.max_batch_size, seconds,
        )

    # ------------------------------------------------------------------ the step

    @torch.inference_mode()
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self.collect(self.launch(scheduler_output))

    @torch.inference_mode()
    def launch(self, scheduler_output: SchedulerOutput, in_flight: LaunchedStep | None = None) -> LaunchedStep:
        """Queue the step's forward and sampling on the device and return without waiting for
        them. `in_flight`: the step launched before this one and not collected yet (async
        scheduling), whose sampled tokens feed this step's rows that the host cannot fill."""
        for request_id in scheduler_output.finished_req_ids:
            self.generators.pop(request_id, None)
        self.structured_output.remove(scheduler_output.finished_req_ids)
        requests = scheduler_output.requests
        if not requests:
            return LaunchedStep([], [], None, {})

        inputs = build_step_inputs(scheduler_output, self.block_size,
                                   in_flight.sample_row_of if in_flight is not None else {})
        device = self.device
        max_blocks = max(len(b) for b in scheduler_output.block_ids)
        block_table = [b + [0] * (max_blocks - len(b)) for b in scheduler_output.block_ids]
        # NOTE: every host -> device copy is queued before the forward, and the sampling batch
        # is built before it too: nothing between the forward and the sampler waits on the GPU.
        input_ids_t = to_device(inputs.input_ids, torch.int64, device)
        if inputs.in_flight_rows:
            # NOTE: stream order makes this read the in-flight step's tokens after it wrote them.
            rows_and_sources = to_device([inputs.in_flight_rows, inputs.in_flight_sources], torch.int64, device)
            input_ids_t.index_copy_(0, rows_and_sources[0], in_flight.sampled.index_select(0, rows_and_sources[1]))
        positions_t = to_device(inputs.positions, torch.int64, device)
        slot_mapping_t = to_device(inputs.slot_mapping, torch.int64, device)
        seq_lens_t = to_device(inputs.seq_lens, torch.int32, device)
        block_table_t = to_device(block_table, torch.int32, device)
        prompt_rows, sample_rows = inputs.prompt_rows, inputs.sample_rows
        rows = prompt_rows + sample_rows
        rows_t = to_device(rows, torch.int64, device) if rows else None
        targets = to_device(inputs.prompt_targets, torch.int64, device) if prompt_rows else None
        batch = self._sampling_batch(inputs.sample_requests) if sample_rows else None

        max_query_len = max(scheduler_output.num_scheduled_tokens)
        graphs = self.cuda_graphs
        decode_only = max_query_len == 1 and len(sample_rows) == len(requests) and not prompt_rows
        if graphs is not None and decode_only and graphs.can_run(len(requests)):
            # Every row samples, so the graph's logits rows are exactly the sample rows.
            logits = graphs.run(input_ids_t, positions_t, slot_mapping_t, seq_lens_t, block_table_t)
        else:
            metadata = AttentionMetadata(
                num_seqs=len(requests),
                num_tokens=len(inputs.input_ids),
                query_start_loc=to_device(inputs.query_start_loc, torch.int32, device),
                seq_lens=seq_lens_t,
                block_table=block_table_t,
                slot_mapping=slot_mapping_t,
                max_query_len=max_query_len,
                max_seq_len=max(inputs.seq_lens),
                query_start_loc_cpu=inputs.query_start_loc,
                seq_lens_cpu=inputs.seq_lens,
            )
            with set_forward_context(ForwardContext(attn_metadata=metadata, kv_caches=self.kv_caches)):
                if self.cpu_decode is not None and self.cpu_decode.applies(metadata, self.kv_caches):
                    hidden = self.cpu_decode.forward(input_ids_t, positions_t, metadata, self.kv_caches)
                else:
                    hidden = self.model(input_ids_t, positions_t)
            logits = self.model.compute_logits(hidden[rows_t]) if rows else None

        prompt_logprobs: dict[str, list[TokenLogprobs | None]] = {}
        if prompt_rows:  # NOTE: reads the device now; only prefill steps ask for it
            prompt_logits = logits[: len(prompt_rows)]
            for request, first_row, count in inputs.prompt_spans:
                entries = compute_prompt_logprobs(
                    prompt_logits[first_row : first_row + count],
                    targets[first_row : first_row + count],
                    request.sampling_params.prompt_logprobs,
                )
                prompt_logprobs.setdefault(request.request_id, []).extend(entries)

        sampled = host_output = None
        if sample_rows:
            sampler_output = self.sampler(logits[len(prompt_rows) :], batch)
            sampled, host_output = sampler_output.sampled, sampler_output.to_host()
        return LaunchedStep(requests, inputs.sample_requests, sampled, prompt_logprobs, host_output)

    def collect(self, launched: LaunchedStep) -> ModelRunnerOutput:
        """Wait for a launched step's sampled tokens (that step's only, not any queued after
        it) and hand them to the scheduler."""
        sampled_by_request: dict[str, tuple[int, TokenLogprobs | None]] = {}
        if launched.host_output is not None:
            token_ids, logprobs = launched.host_output.read()  # the step's one host sync
            self.structured_output.accept(launched.sample_requests, token_ids)
            for request, token, lp in zip(launched.sample_requests, token_ids, logprobs):
                sampled_by_request[request.request_id] = (token, lp)
        req_ids = [r.request_id for r in launched.requests]
        sampled = [sampled_by_request.get(i, (None, None)) for i in req_ids]
        return ModelRunnerOutput(
            req_ids=req_ids,
            sampled_token_ids=[s[0] for s in sampled],
            logprobs=[s[1] for s in sampled],
            prompt_logprobs=launched.prompt_logprobs,
        )

    def _sampling_batch(self, requests: list[Request]) -> SamplingBatch:
        params = [r.sampling_params for r in requests]
        generators = [self._generator(r) for r in requests]
        banned = []
        for request in requests:
            p = request.sampling_params
            if request.num_output_tokens < p.min_tokens:
                eos = [] if p.ignore_eos else sorted(request.eos_token_ids)
                banned.append(eos + list(p.stop_token_ids))
            else:
                banned.append([])
        return SamplingBatch.build(
            params,
            generators,
            [r.prompt_token_ids for r in requests],
            [r.output_token_ids for r in requests],
            banned,
            self.device,
            allowed_token_bitmask=self.structured_output.bitmask(requests),
        )

    def _generator(self, request: Request) -> torch.Generator | None:
        seed = request.sampling_params.seed
        if seed is None:
            return None
        generator = self.generators.get(request.request_id)
        if generator is None:
            generator = self.generators[request.request_id] = seeded_generator(seed, self.device)
        return generator
