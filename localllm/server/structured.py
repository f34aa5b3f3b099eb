"""Requests' output constraints -> StructuredOutputsParams (xgrammar decodes them in the worker).

OpenAI: response_format json_object / json_schema, and forced tool calls. Ollama: format "json" or
a JSON schema. A schema the grammar compiler cannot take is a 400 naming the parameter.
"""

from __future__ import annotations

from localllm.sampling_params import StructuredOutputsParams
from localllm.server.errors import bad_request
from localllm.server.tool_calls import ToolPlan


def _params(param: str, **kwargs) -> StructuredOutputsParams:
    try:
        return StructuredOutputsParams(**kwargs)
    except ValueError as e:
        raise bad_request(f"{param}: {e}", param=param) from None


def from_openai(response_format, plan: ToolPlan | None) -> StructuredOutputsParams | None:
    forced = plan is not None and plan.forced is not None
    kind = response_format.type if response_format is not None else "text"
    if forced and kind != "text":
        raise bad_request("a forced tool call (tool_choice) cannot be combined with response_format", param="tool_choice")
    if forced:
        return _params("tools", json=plan.forced_schema())
    if kind == "json_object":
        return _params("response_format", json_object=True)
    if kind == "json_schema":
        schema = response_format.json_schema.schema_
        if schema is None:
            raise bad_request("response_format.json_schema.schema is required", param="response_format")
        return _params("response_format", json=schema)
    return None


def from_ollama(fmt) -> StructuredOutputsParams | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return _params("format", json_object=True)
    if isinstance(fmt, dict):
        return _params("format", json=fmt)
    raise bad_request(f'format must be "json" or a JSON schema object, got {fmt!r}', param="format")
