"""LLM: the offline Python API, shaped like vLLM's so its examples run with the import changed."""

from __future__ import annotations

from typing import Sequence

from localllm.engine.llm_engine import LLMEngine, PromptType
from localllm.outputs import RequestOutput
from localllm.sampling_params import RequestOutputKind, SamplingParams


class LLM:
    """LLM(model="smollm2", max_model_len=None, max_num_seqs=64, max_num_batched_tokens=None,
    block_size=16, enable_prefix_caching=True, kv_cache_blocks=None, kv_cache_dtype="auto", dtype="auto",
    device="auto", seed=0, gpu_memory_utilization=0.9, enforce_eager=False,
    max_cudagraph_batch_size=None)"""

    def __init__(self, model: str = "smollm2", **options) -> None:
        # vLLM spellings accepted for drop-in use.
        if "num_gpu_blocks_override" in options:
            options["kv_cache_blocks"] = options.pop("num_gpu_blocks_override")
        for ignored in ("tokenizer", "trust_remote_code", "tensor_parallel_size"):
            options.pop(ignored, None)
        self.engine = LLMEngine.from_options(model, **options)

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params_list = (
            list(sampling_params) if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(prompts)
        )
        if len(params_list) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params_list)} sampling params")
        return self._run(prompts, params_list, use_tqdm)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
        add_generation_prompt: bool = True,
        **template_kwargs,
    ) -> list[RequestOutput]:
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        prompts = [self.engine.render_chat(c, add_generation_prompt, **template_kwargs) for c in conversations]
        return self.generate(prompts, sampling_params, use_tqdm)

    def _run(self, prompts: list[PromptType], params_list: list[SamplingParams], use_tqdm: bool) -> list[RequestOutput]:
        engine = self.engine
        request_ids = []
        try:
            for prompt, params in zip(prompts, params_list):
                params = params.clone()
                params.output_kind = RequestOutputKind.FINAL_ONLY
                request_ids.append(engine.add_request(None, prompt, params))
            finals: dict[str, RequestOutput] = {}
            progress = _progress(len(request_ids)) if use_tqdm else None
            while len(finals) < len(request_ids):
                if not engine.has_unfinished_requests():
                    missing = [r for r in request_ids if r not in finals]
                    raise RuntimeError(f"engine stopped with requests unfinished: {missing}")
                for output in engine.step():
                    if output.finished:
                        finals[output.request_id] = output
                        if progress:
                            progress.advance(progress.task_ids[0])
            if progress:
                progress.stop()
        except BaseException:
            engine.abort_request([r for r in request_ids])
            raise
        return [finals[r] for r in request_ids]


def _progress(total: int):
    from rich.progress import Progress

    progress = Progress(transient=True)
    progress.add_task("generating", total=total)
    progress.start()
    return progress
