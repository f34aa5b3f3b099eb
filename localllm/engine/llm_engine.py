"""The step loop: schedule -> execute -> update -> detokenize, one batch per step (with async
scheduling, the next batch is launched before this one's tokens are read back).

LLMEngine is synchronous and single-threaded; AsyncLLM drives it from a thread, LLM calls
step() until its requests finish.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from localllm.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from localllm.engine.output_processor import OutputProcessor, child_request_id
from localllm.engine.request import Request, RequestStatus
from localllm.engine.scheduler import Scheduler
from localllm.errors import LocalLLMError, PromptTooLongError
from localllm.outputs import ModelRunnerOutput, RequestOutput, SchedulerOutput
from localllm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from localllm.worker.model_runner import LaunchedStep

logger = logging.getLogger(__name__)

PromptType = str | dict


@dataclass
class _InFlight:
    scheduler_output: SchedulerOutput
    launched: "LaunchedStep"


def build_engine_config(
    model: str = "smollm2",
    *,
    max_model_len: int | None = None,
    max_num_seqs: int = 64,
    max_num_batched_tokens: int | None = None,
    block_size: int = 16,
    enable_prefix_caching: bool = True,
    kv_cache_blocks: int | None = None,
    gpu_memory_utilization: float = 0.90,
    cpu_kv_cache_gib: float = 2.0,
    kv_cache_dtype: str = "auto",
    dtype: str = "auto",
    device: str = "auto",
    seed: int = 0,
    quantization: str | None = "auto",
    enforce_eager: bool = False,
    max_cudagraph_batch_size: int | None = None,
    async_scheduling: bool | None = None,
) -> tuple[EngineConfig, "object"]:
    """Resolve the model name, read its checkpoint header, and fix every limit. Returns the
    config and the opened checkpoint (weights are read later, lazily)."""
    from localllm.hub import ensure_model
    from localllm.models.loader import load_checkpoint

    path = ensure_model(model, device=device)  # NOTE: pulls a Hub model on first use
    checkpoint = load_checkpoint(path)
    model_len = checkpoint.max_model_len
    if max_model_len is not None:
        if max_model_len > model_len:
            logger.warning("max_model_len %d exceeds the model's context %d", max_model_len, model_len)
        model_len = max_model_len
    if max_num_batched_tokens is None:
        max_num_batched_tokens = min(max(2048, model_len), 8192)
    config = EngineConfig(
        model=ModelConfig(
            model=model,
            path=path,
            dtype=dtype,
            device=device,
            max_model_len=model_len,
            seed=seed,
            quantization=None if quantization in (None, "none") else quantization,
            enforce_eager=enforce_eager,
            max_cudagraph_batch_size=max_cudagraph_batch_size,
        ),
        cache=CacheConfig(
            block_size=block_size,
            enable_prefix_caching=enable_prefix_caching,
            num_blocks=kv_cache_blocks,
            gpu_memory_utilization=gpu_memory_utilization,
            cpu_kv_cache_gib=cpu_kv_cache_gib,
            kv_cache_dtype=kv_cache_dtype,
        ),
        scheduler=SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=model_len,
            async_scheduling=async_scheduling,
        ),
    )
    return config, checkpoint


class LLMEngine:
    def __init__(self, config: EngineConfig, checkpoint) -> None:
        from localllm.worker.model_runner import ModelRunner

        self.config = config
        self.checkpoint = checkpoint
        self.tokenizer = checkpoint.tokenizer
        self.chat_template = checkpoint.chat_template
        self.eos_token_ids = frozenset(checkpoint.eos_token_ids)
        started = time.monotonic()
        self.runner = ModelRunner(config.model, config.cache, config.scheduler, checkpoint)
        self.load_seconds = time.monotonic() - started
        self.scheduler = Scheduler(config.scheduler, config.cache, self.runner.num_blocks)
        self.output_processor = OutputProcessor(self.tokenizer)
        self._request_counter = itertools.count()
        async_scheduling = config.scheduler.async_scheduling
        self.async_scheduling = self.runner.device.type == "cuda" if async_scheduling is None else async_scheduling
        # The step launched on the device and not collected yet (async scheduling only).
        self._in_flight: _InFlight | None = None

    @classmethod
    def from_options(cls, model: str = "smollm2", **options) -> "LLMEngine":
        config, checkpoint = build_engine_config(model, **options)
        return cls(config, checkpoint)

    @property
    def max_model_len(self) -> int:
        return self.scheduler.max_model_len

    # ------------------------------------------------------------------ requests

    def tokenize(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: pass {'prompt_token_ids': [...]}")
            token_ids = self.tokenizer.encode(prompt, add_special_tokens=True)
            bos = self.tokenizer.bos_token_id
            # NOTE: a rendered chat template already starts with BOS; do not add a second.
            if bos is not None and len(token_ids) >= 2 and token_ids[0] == bos and token_ids[1] == bos:
                token_ids = token_ids[1:]
            return prompt, token_ids
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            token_ids = list(prompt["prompt_token_ids"])
            vocab = self.config_vocab_size
            if any((not isinstance(t, int)) or t < 0 or t >= vocab for t in token_ids):
                raise ValueError(f"prompt_token_ids must be integers in [0, {vocab})")
            return prompt.get("prompt"), token_ids
        if isinstance(prompt, dict) and "prompt" in prompt:
            return self.tokenize(prompt["prompt"])
        raise TypeError("a prompt is a string, {'prompt': str} or {'prompt_token_ids': [...]}")

    @property
    def config_vocab_size(self) -> int:
        return self.checkpoint.hf_config.vocab_size

    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if not prompt_token_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_token_ids) >= self.max_model_len:
            raise PromptTooLongError(len(prompt_token_ids), self.max_model_len)

    def add_request(
        self,
        request_id: str | None,
        prompt: PromptType,
        params: SamplingParams | None = None,
        arrival_time: float | None = None,
    ) -> str:
        params = params or SamplingParams()
        request_id = request_id if request_id is not None else str(next(self._request_counter))
        if request_id in self.output_processor.states:
            raise ValueError(f"request id {request_id!r} is already in use")
        text, token_ids = self.tokenize(prompt)
        self.validate(token_ids, params)
        children = []
        for index in range(params.n):
            child_params = params
            if params.n > 1 and params.seed is not None:
                child_params = params.clone()
                child_params.seed = params.seed + index
            children.append(
                Request(
                    child_request_id(index, request_id, params.n),
                    token_ids,
                    child_params,
                    self.eos_token_ids,
                    arrival_time,
                )
            )
        self.output_processor.add_request(request_id, text, children, params)
        for child in children:
            self.scheduler.add_request(child)
        return request_id

    def abort_request(self, request_ids: str | list[str]) -> list[RequestOutput]:
        """Stop requests now and free their blocks; returns their final outputs."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        outputs = []
        for request_id in request_ids:
            self.scheduler.finish_requests(self.output_processor.child_ids(request_id), RequestStatus.FINISHED_ABORTED)
            output = self.output_processor.abort_output(request_id)
            if output is not None:
                outputs.append(output)
        self._drop_in_flight_if_dead()
        return outputs

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    # ------------------------------------------------------------------ the step

    def step(self) -> list[RequestOutput]:
        """Run one step and return its outputs. With async scheduling the next step is
        scheduled and launched before this one's tokens are read back, so the host's work
        between steps (reading tokens, stop checks, detokenizing, building the next batch)
        overlaps the device's."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            scheduler_output = self.scheduler.schedule()
            if scheduler_output.is_empty:
                # Still let the runner drop state of requests that ended.
                self.runner.execute_model(scheduler_output)
                return []
            in_flight = _InFlight(scheduler_output, self.runner.launch(scheduler_output))
        if self.async_scheduling:
            ahead = self.scheduler.schedule_ahead(in_flight.scheduler_output)
            if ahead is not None:
                self._in_flight = _InFlight(ahead, self.runner.launch(ahead, in_flight.launched))
        outputs = self._update(in_flight.scheduler_output, self.runner.collect(in_flight.launched))
        self._drop_in_flight_if_dead()  # every request of the step ahead ended with this one
        return outputs

    def _drop_in_flight_if_dead(self) -> None:
        """Forget the step in flight when none of its requests is still running: its tokens
        would be thrown away, and no step() should wait for them.

        NOTE: not waiting for it is safe: the device runs it before anything launched later,
        and its host copies stay allocated until they have run (torch's pinned-memory cache)."""
        if self._in_flight is not None and all(r.is_finished for r in self._in_flight.scheduler_output.requests):
            self._in_flight = None

    def _update(self, scheduler_output: SchedulerOutput, runner_output: ModelRunnerOutput) -> list[RequestOutput]:
        updated = self.scheduler.update_from_output(scheduler_output, runner_output)
        logprobs_by_id = dict(zip(runner_output.req_ids, runner_output.logprobs))
        outputs, stopped = self.output_processor.process(
            updated, logprobs_by_id, runner_output.prompt_logprobs, scheduler_output.num_cached_tokens
        )
        if stopped:
            self.scheduler.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
        return outputs

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict:
        kv = self.scheduler.kv_cache_manager
        return {
            "num_running": self.scheduler.num_running,
            "num_waiting": self.scheduler.num_waiting,
            "kv_blocks_used": kv.pool.num_used_blocks,
            "kv_blocks_total": kv.num_total_blocks,
            "num_preemptions": self.scheduler.num_preemptions,
            "prefix_cache_queries": kv.prefix_cache_queries,
            "prefix_cache_hits": kv.prefix_cache_hits,
        }

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        from localllm.engine.chat import render_chat

        return render_chat(self.tokenizer, self.chat_template, messages, add_generation_prompt, **kwargs)


__all__ = ["LLMEngine", "build_engine_config", "LocalLLMError"]
