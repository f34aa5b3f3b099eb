"""Request bodies of the Ollama API (pydantic, at the edge only).

Unknown fields and unknown options are a 400. Options that tune llama.cpp's runtime (threads,
GPU layers, mmap, ...) mean nothing here and are accepted and ignored, as are options whose
effect this engine has built in (`repeat_last_n`: the penalty covers the whole context, vLLM's
way); sampling options it does not implement are accepted only at their neutral value.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Options(_Body):
    # sampling and length
    num_ctx: Annotated[int, Field(ge=1)] | None = None
    num_predict: Annotated[int, Field(ge=-2)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    seed: int | None = None
    stop: list[str] | None = None
    repeat_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    # accepted at their neutral value only
    typical_p: float | None = None
    tfs_z: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    # no effect here (llama.cpp runtime settings, or built in)
    repeat_last_n: int | None = None
    penalize_newline: bool | None = None
    num_keep: int | None = None
    numa: bool | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    logits_all: bool | None = None
    vocab_only: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    embedding_only: bool | None = None
    num_thread: int | None = None

    @field_validator("typical_p", "tfs_z")
    @classmethod
    def _neutral_one(cls, value, info):
        if value is not None and value != 1.0:
            raise ValueError(f"{info.field_name} is not supported (only 1.0, off)")
        return value

    @field_validator("mirostat")
    @classmethod
    def _no_mirostat(cls, value):
        if value:
            raise ValueError("mirostat sampling is not supported (only 0, off)")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        if value and any(not s for s in value):
            raise ValueError("stop sequences must be non-empty strings")
        return value


class ToolFunctionIn(_Body):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    index: int | None = None


class ToolCallIn(_Body):
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolFunctionIn


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # NOTE: history fields, not request parameters

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    images: list[str] | None = None
    thinking: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Annotated[str, Field(min_length=1)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"] = "function"
    function: ToolFunction


Format = Union[Literal["", "json"], dict[str, Any]]


class _GenerateFields(_Body):
    model: Annotated[str, Field(min_length=1)]
    stream: bool = True
    format: Format | None = None
    options: Options | None = None
    keep_alive: float | str | None = None  # NOTE: the model stays loaded while the server runs
    think: bool | Literal["low", "medium", "high"] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


class ChatRequest(_GenerateFields):
    messages: list[Message] | None = None
    tools: list[Tool] | None = None
    raw: bool | None = None  # NOTE: Continue sends it on /api/chat too; Ollama ignores it there
    # NOTE: ollama-ai-provider-v2 (Cline's Ollama provider) sends these at the top level, where
    # Ollama ignores them (its sampling settings live in `options`); ignored here too.
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    tool_choice: Any = None


class GenerateRequest(_GenerateFields):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[Annotated[int, Field(ge=0)]] | None = None
    raw: bool | None = None
    images: list[str] | None = None


class ShowRequest(_Body):
    model: str | None = None
    name: str | None = None  # older clients
    verbose: bool | None = None
