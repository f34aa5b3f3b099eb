"""The local HTTP server: OpenAI and Ollama APIs over one AsyncLLM.

  app.py                 the app factory: routes, /health, /metrics, API key, error shapes
  openai_routes.py       /v1/models, /v1/chat/completions (openai_chat.py), /v1/completions
                         (openai_completions.py), vLLM's /tokenize and /detokenize
                         (openai_tokenize.py); bodies in openai_protocol.py
  ollama_routes.py       /api/version, /api/tags, /api/show, /api/ps, /api/chat and
                         /api/generate (ollama_generate.py, answers in ollama_answer.py);
                         bodies in ollama_protocol.py
  generation.py          one engine request as a stream of DELTA outputs, with metrics;
                         collect.py folds it for non-streaming answers
  chat_prompt.py         messages -> prompt through the model's chat template
  tool_calls.py          tools in the prompt, calls parsed back (Hermes, Llama 3 JSON)
  structured.py          response_format / format / forced tool calls -> constrained decoding
  fim.py                 fill-in-the-middle tokens and prompt
  streaming.py           SSE / NDJSON bodies that abort the request when the client leaves
  state.py, metrics.py, errors.py, sampling.py, logprobs.py, model_info.py
"""

from localllm.server.app import create_app
from localllm.server.model_info import ModelInfo, describe_model
from localllm.server.state import ServerSettings

__all__ = ["create_app", "ModelInfo", "ServerSettings", "describe_model"]
