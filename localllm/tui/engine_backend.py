"""The engine in this process: AsyncLLM, loaded behind the UI with its steps reported.

Load steps: import torch and the engine; find the model (pulling it from the Hub when it is
not in the store: the pull's messages are the steps); open the checkpoint (header, tokenizer);
load the weights (counted tensor by tensor); quantize / set up the KV cache; warm up (one
1-token request, so the first answer's time to first token is the model's, not the first
call's set-up).
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Callable

from localllm.tui.backend import BackendError, Delta, LoadStep, ModelInfo
from localllm.tui.settings import ChatSettings

logger = logging.getLogger(__name__)


class EngineBackend:
    def __init__(self, model: str, engine_args: dict[str, Any] | None = None, *, llm=None) -> None:
        """`llm`: an AsyncLLM (or a stand-in with its surface) already built; load() then only
        reads its facts, and shutdown() leaves it running (its owner stops it)."""
        self.model = model
        self.engine_args = dict(engine_args or {})
        self.llm = llm
        self._owns_llm = llm is None

    # ------------------------------------------------------------------ load

    def load(self, progress: Callable[[LoadStep], None]) -> ModelInfo:
        if self.llm is None:
            self.llm = _build_async_llm(self.model, self.engine_args, progress)
        return ModelInfo(name=display_name(self.model), quantization=_quantization_label(self.llm),
                         max_model_len=self.llm.max_model_len)

    # ------------------------------------------------------------------ chat

    def render(self, messages: list[dict]) -> str:
        from jinja2.exceptions import TemplateError

        try:
            return self.llm.render_chat(messages)
        except TemplateError as error:
            raise BackendError(f"the model's chat template failed: {error}") from error

    async def stream(self, messages: list[dict], settings: ChatSettings, request_id: str) -> AsyncIterator[Delta]:
        from localllm.errors import LocalLLMError

        try:
            params = settings.to_sampling_params()
            prompt = self.render(messages)
            first = True
            async for out in self.llm.generate(prompt, params, request_id):
                completion = out.outputs[0]
                yield Delta(
                    text=completion.text,
                    num_new_tokens=len(completion.token_ids),
                    finish_reason=completion.finish_reason if out.finished else None,
                    num_prompt_tokens=len(out.prompt_token_ids) if first else None,
                    num_cached_tokens=out.num_cached_tokens if first else None,
                )
                first = False
        except (LocalLLMError, ValueError) as error:
            raise BackendError(str(error)) from error

    async def abort(self, request_id: str) -> None:
        await self.llm.abort(request_id)

    def count_tokens(self, messages: list[dict]) -> int | None:
        tokenizer = self.llm.get_tokenizer()
        if tokenizer is None:
            return None
        # NOTE: encoded as the engine encodes a prompt, less its double-BOS trim: the count is
        # exact or one over, the safe side for the overflow warning.
        return len(tokenizer.encode(self.render(messages), add_special_tokens=True))

    def kv_cache_usage(self) -> tuple[int, int] | None:
        stats = self.llm.stats()
        return stats["kv_blocks_used"], stats["kv_blocks_total"]

    def shutdown(self) -> None:
        if self.llm is not None and self._owns_llm:
            self.llm.shutdown()


def display_name(model: str) -> str:
    import os

    name = os.path.basename(model.rstrip("/")) if os.sep in model else model
    return name.removesuffix(".gguf")


def _quantization_label(llm) -> str | None:
    """What the weights run as, and what the file stored: "int4 (Q4_1)", "float32 (Q4_1)"."""
    engine = getattr(llm, "engine", None)
    runner = getattr(engine, "runner", None)
    if runner is None:
        return None
    running = runner.quantization or str(runner.dtype).removeprefix("torch.")
    stored = getattr(engine.checkpoint, "weight_quantization", None)
    return f"{running} ({stored})" if stored else running


def _build_async_llm(model: str, engine_args: dict[str, Any], progress: Callable[[LoadStep], None]):
    progress(LoadStep("import torch and the engine"))
    from localllm.engine.async_llm import AsyncLLM
    from localllm.engine.llm_engine import LLMEngine, build_engine_config
    from localllm.models.loader import LazyWeights

    path = _find_or_pull(model, engine_args.get("device", "auto"), progress)
    progress(LoadStep(f"open {path}"))
    config, checkpoint = build_engine_config(path, **engine_args)
    weights = checkpoint.weights
    total = len(weights)
    after_weights = _after_weights_label(config, checkpoint)

    def counted():
        done = 0
        progress(LoadStep("load weights", 0, total))
        for item in weights():
            yield item
            done += 1
            # NOTE: the tensor is handed over before it is counted, so `total` shows only once
            # the last one is in place.
            if done % 8 == 0 or done == total:
                progress(LoadStep("load weights", done, total))
        progress(LoadStep(after_weights))

    checkpoint.weights = LazyWeights(counted, total)
    engine = LLMEngine(config, checkpoint)
    progress(LoadStep("warm up"))
    _warm_up(engine)
    return AsyncLLM(model, engine=engine)


def _find_or_pull(model: str, device: str, progress: Callable[[LoadStep], None]) -> str:
    """The model's local path; a Hub model not in the store is pulled first, the pull's
    messages shown as load steps (they would go to stderr, which the UI covers) and its
    progress events as a byte (or layer) bar."""
    from localllm.hub import ensure_model

    progress(LoadStep(f"find {model}"))
    return ensure_model(model, device=device, log=lambda message: progress(LoadStep(message)),
                        progress=lambda event: progress(pull_step(model, event)))


def pull_step(model: str, event) -> LoadStep:
    """A pull's PullProgress as a load step: the whole download (or quantization) is the bar."""
    label = f"download {model}" if event.stage == "download" else f"quantize {model} ({event.item})"
    return LoadStep(label, event.overall_done, event.overall_total, pull=event)


def _after_weights_label(config, checkpoint) -> str:
    from localllm.worker.model_runner import resolve_device, resolve_quantization

    try:
        device = resolve_device(config.model.device)
        quantization = resolve_quantization(config.model.quantization, checkpoint, device)
    except (ValueError, RuntimeError):
        return "set up the KV cache"  # the engine raises the same error itself, with its message
    return "quantize to int4, set up the KV cache" if quantization == "int4" else "set up the KV cache"


def _warm_up(engine) -> None:
    """One 1-token request through the whole path, on this thread, before any caller exists.
    NOTE: it leaves every block free; its one partial block is never cached."""
    from localllm.sampling_params import SamplingParams

    token_ids = [engine.tokenizer.bos_token_id or 0] if engine.tokenizer is not None else [0]
    engine.add_request("chat-warm-up", {"prompt_token_ids": token_ids * 4}, SamplingParams(max_tokens=1))
    while engine.has_unfinished_requests():
        engine.step()
