"""localllm's engine as a benchmark backend: every request added at once, then `step()` until
done, the way `LLM.generate` runs them."""

from __future__ import annotations

from localllm.bench.backends import Backend, BatchTiming, now
from localllm.bench.floor import kv_bytes_per_token, weight_bytes_read


class LocalBackend(Backend):
    name = "localllm"

    def __init__(self, model: str, **engine_options) -> None:
        from localllm.engine.llm_engine import LLMEngine

        self.engine = LLMEngine.from_options(model, **engine_options)
        self.tokenizer = self.engine.tokenizer
        self.model_path = self.engine.config.model.path
        self.max_model_len = self.engine.max_model_len
        self.device = self.engine.runner.device.type

    def describe(self) -> dict:
        from localllm import __version__

        runner = self.engine.runner
        return {
            "version": __version__,
            "device": str(runner.device),
            "dtype": str(runner.dtype).removeprefix("torch."),
            "quantization": runner.quantization,
            "max_num_seqs": self.engine.config.scheduler.max_num_seqs,
            "kv_cache_blocks": runner.num_blocks,
            "kv_cache_bytes": runner.kv_cache_bytes,
            "load_seconds": round(self.engine.load_seconds, 3),
        }

    def decode_bytes(self) -> dict:
        import torch

        from localllm.models.registry import kv_cache_spec

        model = self.engine.runner.model
        # The embedding is streamed only while it is the LM head (the int4 path's 8-bit head is not).
        tied = bool(getattr(self.engine.checkpoint.hf_config, "tie_word_embeddings", False)) and hasattr(
            model.lm_head, "weight")
        tensors = [*model.named_parameters(), *model.named_buffers()]
        element_size = torch.empty((), dtype=self.engine.runner.kv_cache_dtype).element_size()  # the cache's, not the model's
        return {"weight_bytes": weight_bytes_read(tensors, tied),
                "kv_bytes_per_token": kv_bytes_per_token(*kv_cache_spec(self.engine.checkpoint.hf_config), element_size)}

    def run(self, prompts: list[list[int]], output_len: int) -> BatchTiming:
        from localllm.sampling_params import RequestOutputKind, SamplingParams

        engine = self.engine
        params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True, detokenize=False,
                                output_kind=RequestOutputKind.DELTA)
        timing = BatchTiming(started=now(), num_prompt_tokens=sum(len(p) for p in prompts))
        request_ids = [engine.add_request(None, {"prompt_token_ids": p}, params) for p in prompts]
        first: dict[str, float] = {}
        finished: dict[str, float] = {}
        try:
            while engine.has_unfinished_requests():
                outputs = engine.step()  # NOTE: returns after sampling: the token ids are on the host
                stamp = now()
                for output in outputs:
                    count = sum(len(c.token_ids) for c in output.outputs)
                    timing.num_output_tokens += count
                    if count:
                        first.setdefault(output.request_id, stamp)
                    if output.finished:
                        finished[output.request_id] = stamp
        except BaseException:
            engine.abort_request(request_ids)
            raise
        timing.first_token = [first[r] for r in request_ids]
        timing.finished = [finished[r] for r in request_ids]
        return timing

    def close(self) -> None:
        self.engine = None
