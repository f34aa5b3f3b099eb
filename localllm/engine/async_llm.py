"""AsyncLLM: the streaming front of the engine for the server, the chat UI and the CLI.

One engine thread owns the LLMEngine and runs the step loop; asyncio callers talk to it
through a command inbox (add, abort) and get RequestOutputs back on per-request queues.
Tokenizing and validating happen in the caller, so a bad prompt raises before anything
streams.

NOTE: every LLMEngine call happens on the engine thread; no lock is needed around it.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, AsyncIterator

from localllm.engine.llm_engine import LLMEngine, PromptType
from localllm.outputs import RequestOutput
from localllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    pass


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


@dataclass(frozen=True)
class LoadedModel:
    """What front ends may know about the loaded model, read once (AsyncLLM.loaded_model())."""

    path: str  # the weights: a file (GGUF) or a directory
    format: str  # gguf | safetensors
    hf_config: Any  # transformers PretrainedConfig
    weight_quantization: str | None  # what the checkpoint stores (Q4_1, ...), if quantized
    dtype: str  # what the weights run as: float32, bfloat16, ...
    quantization: str | None  # the runtime quantization (int4, ...), if any
    device_type: str  # cpu | cuda
    weights_bytes: int  # in memory; tied weights counted once
    kv_cache_bytes: int
    load_seconds: float


class AsyncLLM:
    def __init__(self, model: str = "smollm2", *, engine: LLMEngine | None = None, **options) -> None:
        self.model_name = model
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._dead: BaseException | None = None
        self._stopping = False
        self.engine = engine
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        # NOTE: the engine thread also loads the model (when not given one): on the CPU, torch's
        # OpenMP keeps one thread team per thread that ever ran parallel work, and with two teams
        # on the cores libgomp stops spinning between parallel regions, so every op of a decode
        # step waits for its workers to wake (measured: single-stream decode ~1.7x slower).
        self._thread = threading.Thread(target=self._run, args=(model, options), name="localllm-engine", daemon=True)
        self._thread.start()
        self._loaded.wait()
        if self._load_error is not None:
            raise self._load_error
        self.tokenizer = self.engine.tokenizer
        self.chat_template = self.engine.chat_template

    @classmethod
    def from_engine_args(cls, model: str = "smollm2", **options) -> "AsyncLLM":
        return cls(model, **options)

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        return self.engine.render_chat(messages, add_generation_prompt, **kwargs)

    def get_tokenizer(self):
        return self.tokenizer

    def stats(self) -> dict:
        return self.engine.stats()

    @property
    def is_running(self) -> bool:
        """Whether the engine loop is alive: not failed, not shut down."""
        return self._dead is None and not self._stopping and self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        """What stopped the engine loop, if it failed."""
        return self._dead

    def tokenize(self, prompt: PromptType) -> list[int]:
        """The prompt's token ids as generate() would run them (special tokens, one BOS)."""
        return self.engine.tokenize(prompt)[1]

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary size (valid token ids are below it)."""
        return self.engine.config_vocab_size

    @property
    def load_seconds(self) -> float:
        """How long loading the model (weights and KV cache) took."""
        return self.engine.load_seconds

    def loaded_model(self) -> LoadedModel:
        engine = self.engine
        checkpoint, runner = engine.checkpoint, engine.runner
        # NOTE: keyed by storage so tied weights (embedding = lm_head) count once.
        tensors = {t.data_ptr(): t.numel() * t.element_size() for t in runner.model.state_dict().values()}
        return LoadedModel(
            path=checkpoint.path,
            format=checkpoint.format,
            hf_config=checkpoint.hf_config,
            weight_quantization=checkpoint.weight_quantization,
            dtype=str(runner.dtype).removeprefix("torch."),
            quantization=runner.quantization,
            device_type=runner.device.type,
            weights_bytes=sum(tensors.values()),
            kv_cache_bytes=runner.kv_cache_bytes,
            load_seconds=engine.load_seconds,
        )

    # ------------------------------------------------------------------ API

    async def generate(
        self, prompt: PromptType, sampling_params: SamplingParams | None, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        """Stream RequestOutputs for one request. Leaving the loop early (break, cancel, a
        dropped connection) aborts the request in the engine and frees its blocks."""
        if self._dead is not None:
            raise EngineDeadError(f"the engine stopped: {self._dead}")
        if self._stopping:
            raise EngineDeadError("the engine was shut down")
        params = sampling_params or SamplingParams()
        text, token_ids = self.engine.tokenize(prompt)
        self.engine.validate(token_ids, params)
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        self._send(("add", request_id, {"prompt": text, "prompt_token_ids": token_ids}, params))
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    break
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._send(("abort", request_id))

    async def abort(self, request_id: str) -> None:
        self._send(("abort", request_id))

    def shutdown(self) -> None:
        self._stopping = True
        self._wakeup.set()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ engine thread

    def _send(self, command: tuple) -> None:
        self._inbox.put(command)
        self._wakeup.set()

    def _drain_inbox(self) -> None:
        while True:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                _, request_id, prompt, params = command
                stream = self._streams.get(request_id)
                if stream is None:  # the caller left before the engine saw the request
                    continue
                try:
                    self.engine.add_request(request_id, prompt, params)
                except Exception as error:  # noqa: BLE001 - delivered to the caller
                    stream.put(error)
            elif command[0] == "abort":
                # NOTE: a caller still streaming (abort() from elsewhere) gets the final
                # output, finish_reason "abort"; one that left has no stream any more.
                for output in self.engine.abort_request(command[1]):
                    stream = self._streams.get(output.request_id)
                    if stream is not None:
                        stream.put(output)

    def _run(self, model: str, options: dict) -> None:
        try:
            if self.engine is None:
                self.engine = LLMEngine.from_options(model, **options)
        except BaseException as error:  # noqa: BLE001 - raised again in the constructing thread
            self._load_error = error
            return
        finally:
            self._loaded.set()
        try:
            while not self._stopping:
                self._drain_inbox()
                if not self.engine.has_unfinished_requests():
                    self._wakeup.wait(timeout=0.5)
                    self._wakeup.clear()
                    continue
                for output in self.engine.step():
                    stream = self._streams.get(output.request_id)
                    if stream is not None:
                        stream.put(output)
        except BaseException as error:  # noqa: BLE001 - every waiting caller must hear of it
            logger.exception("engine loop failed")
            self._dead = error
            for stream in list(self._streams.values()):
                stream.put(EngineDeadError(f"the engine stopped: {error}"))
            return
        # Shut down: requests still running are aborted (their blocks freed) and their callers
        # told, instead of waiting forever.
        self._drain_inbox()
        self.engine.abort_request(list(self.engine.output_processor.states))
        for stream in list(self._streams.values()):
            stream.put(EngineDeadError("the engine was shut down"))
