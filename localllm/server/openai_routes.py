"""The OpenAI API: /v1/models, /v1/chat/completions, /v1/completions; and vLLM's /tokenize and
/detokenize, which vLLM serves at the root (`tokens_router`)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from localllm.server.errors import APIError
from localllm.server.openai_chat import create_chat_completion
from localllm.server.openai_completions import create_completion
from localllm.server.openai_protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from localllm.server.openai_tokenize import detokenize, tokenize
from localllm.server.state import ServerState

router = APIRouter(prefix="/v1")
tokens_router = APIRouter()


def _state(request: Request) -> ServerState:
    return request.app.state.server


def model_card(state: ServerState) -> dict:
    m = state.model
    return {
        "id": m.name,
        "object": "model",
        "created": int(state.started),
        "owned_by": "localllm",
        "root": m.name,
        "parent": None,
        "max_model_len": m.max_model_len,  # vLLM's field
        "context_length": m.max_model_len,
        "quantization": f"{m.running_as} ({m.quantization_level})",
    }


@router.get("/models")
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": [model_card(_state(request))]}


@router.get("/models/{model:path}")
async def get_model(model: str, request: Request) -> dict:
    state = _state(request)
    if not state.model.matches(model):
        raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
    return model_card(state)


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    return await create_chat_completion(_state(request), body, request)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    return await create_completion(_state(request), body, request)


@tokens_router.post("/tokenize")
async def tokenize_route(body: TokenizeRequest, request: Request) -> dict:
    return tokenize(_state(request), body)


@tokens_router.post("/detokenize")
async def detokenize_route(body: DetokenizeRequest, request: Request) -> dict:
    return detokenize(_state(request), body)
