"""The Ollama API: /api/version, /api/tags, /api/show, /api/ps, /api/chat, /api/generate."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Request

from localllm.server.errors import APIError, bad_request
from localllm.server.model_info import ModelInfo
from localllm.server.ollama_generate import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P, chat, generate
from localllm.server.ollama_protocol import ChatRequest, GenerateRequest, ShowRequest
from localllm.server.state import ServerState

router = APIRouter(prefix="/api")

# NOTE: the Ollama API level these routes follow (tools, structured outputs, capabilities in
# /api/show). Clients compare it against the versions that brought those features.
OLLAMA_API_VERSION = "0.9.0"

# Ollama reports a model kept loaded for good (keep_alive < 0) as expiring at now + Go's
# largest duration; this server keeps its model loaded for as long as it runs.
_FOREVER = timedelta(microseconds=(2**63 - 1) // 1000)


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _entry(model: ModelInfo) -> dict:
    return {"name": model.ollama_name, "model": model.ollama_name, "digest": model.digest, "details": model.ollama_details()}


def show_template(model: ModelInfo) -> str:
    """Ollama shows a Go template. The chat part here is the model's own (Jinja) template; the
    FIM branch on `.Suffix` is what clients read to know the model can fill in the middle."""
    chat = model.chat_template or "{{ .Prompt }}"
    if model.fim is None:
        return chat
    return "{{- if .Suffix }}" + model.fim.go_template() + "{{- else }}" + chat + "{{- end }}"


@router.get("/version")
async def version() -> dict:
    return {"version": OLLAMA_API_VERSION}


@router.get("/tags")
async def tags(request: Request) -> dict:
    m = _state(request).model
    return {"models": [{**_entry(m), "modified_at": _iso(m.modified_at), "size": m.file_size}]}


@router.get("/ps")
async def ps(request: Request) -> dict:
    m = _state(request).model
    entry = {
        **_entry(m),
        "size": m.memory_size,
        "size_vram": m.memory_size if m.on_gpu else 0,
        "expires_at": _iso(datetime.now(timezone.utc) + _FOREVER),
        "context_length": m.max_model_len,
    }
    return {"models": [entry]}


@router.post("/show")
async def show(body: ShowRequest, request: Request) -> dict:
    state = _state(request)
    name = body.model or body.name
    if not name:
        raise bad_request("model is required", param="model")
    if not state.model.matches(name):
        raise APIError(404, f"model '{name}' not found", param="model", code="model_not_found")
    m = state.model
    # NOTE: clients (Continue) read the context length from `num_ctx` here.
    parameters = (
        f"num_ctx {m.max_model_len}\ntemperature {DEFAULT_TEMPERATURE}\ntop_k {DEFAULT_TOP_K}\ntop_p {DEFAULT_TOP_P}"
    )
    template = show_template(m)
    return {
        "license": "",
        "modelfile": f"# Modelfile of {m.ollama_name}, served by localllm\nFROM {m.name}\n"
        f'TEMPLATE """{template}"""\n' + "".join(f"PARAMETER {line}\n" for line in parameters.splitlines()),
        "parameters": parameters,
        "template": template,
        "details": m.ollama_details(),
        "model_info": {
            "general.architecture": m.family,
            "general.parameter_count": m.parameter_count,
            f"{m.family}.context_length": m.max_model_len,
        },
        "capabilities": m.capabilities,
        "modified_at": _iso(m.modified_at),
    }


@router.post("/chat")
async def chat_route(body: ChatRequest, request: Request):
    return await chat(_state(request), body, request)


@router.post("/generate")
async def generate_route(body: GenerateRequest, request: Request):
    return await generate(_state(request), body, request)
