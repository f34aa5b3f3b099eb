"""`bench serve`: streaming clients against any OpenAI-compatible server.

Requests go to /v1/completions (or /v1/chat/completions) with `stream: true` and the usage chunk
asked for. Each client times its first streamed text (TTFT), the gaps between later chunks
(inter-token latency) and the whole request (end to end). Requests are sent either by
`concurrency` clients in a closed loop (each sends its next request when its last one ends) or
at a Poisson `rate` (requests/s; exponential gaps drawn from the seed), optionally capped by a
concurrency.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import httpx

from localllm.bench.stats import summarize
from localllm.bench.workload import Workload
from localllm.errors import LocalLLMError

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


class ServeBenchError(LocalLLMError):
    """The server cannot be benchmarked (unreachable, refuses every request): one line."""


@dataclass(frozen=True)
class ServeTarget:
    url: str
    model: str
    endpoint: str = "completions"
    api_key: str | None = None
    ignore_eos: bool = True  # vLLM's extension, also ours; --no-ignore-eos for servers without it
    timeout: float = 600.0

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def body(self, prompt: str, max_tokens: int) -> dict:
        body = {"model": self.model, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
                "stream_options": {"include_usage": True}}
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body


@dataclass
class RequestResult:
    ok: bool = False
    ttft: float | None = None
    e2e: float | None = None
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    output_tokens: int = 0
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


def _chunk_text(chunk: dict) -> str:
    if not chunk.get("choices"):
        return ""
    choice = chunk["choices"][0]
    if "delta" in choice:
        delta = choice["delta"] or {}
        return (delta.get("content") or "") + (delta.get("reasoning_content") or "")
    return choice.get("text") or ""


async def send_request(client: httpx.AsyncClient, target: ServeTarget, prompt: str, max_tokens: int) -> RequestResult:
    result = RequestResult()
    started = last = time.perf_counter()
    num_chunks = 0
    try:
        async with client.stream("POST", target.url + ENDPOINTS[target.endpoint], json=target.body(prompt, max_tokens),
                                 headers=target.headers()) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {_error_message(await response.aread())}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:"):].strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    result.error = f"error in stream: {_error_message(payload.encode())}"
                    return result
                stamp = time.perf_counter()
                if _chunk_text(chunk):
                    num_chunks += 1
                    if result.ttft is None:
                        result.ttft = stamp - started
                    else:
                        result.itl.append(stamp - last)
                    last = stamp
                usage = chunk.get("usage")
                if usage:
                    result.output_tokens = usage.get("completion_tokens") or 0
                    result.prompt_tokens = usage.get("prompt_tokens")
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        result.error = f"{type(e).__name__}: {e}"
        return result
    result.e2e = time.perf_counter() - started
    result.output_tokens = result.output_tokens or num_chunks  # a server without usage: one token a chunk
    result.ok = result.ttft is not None
    if not result.ok:
        result.error = "the stream carried no text"
    return result


def _error_message(body: bytes) -> str:
    """The message of an OpenAI error body (or Ollama's, or any text), cut to one short line."""
    text = body.decode(errors="replace")
    try:
        error = json.loads(text)["error"]
        text = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    except (ValueError, KeyError, TypeError):
        pass
    return " ".join(text.split())[:300]


def _client(target: ServeTarget, max_connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncClient(timeout=httpx.Timeout(target.timeout, connect=10.0), limits=limits)


async def list_models(url: str, api_key: str | None = None, required: bool = True) -> list[str]:
    """The model ids the server lists; ServeBenchError when it cannot be reached (or, when the
    list is `required`, when it has none to give)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.get(url + "/v1/models", headers=headers)
    except httpx.HTTPError as e:
        raise ServeBenchError(f"cannot reach {url}: {e or type(e).__name__}") from e
    if response.status_code == 401:
        raise ServeBenchError(f"{url} answered 401 Unauthorized: pass its key with --api-key")
    if response.status_code != 200:
        if not required:
            return []
        raise ServeBenchError(f"{url}/v1/models answered HTTP {response.status_code}: pass the model with --model")
    try:
        return [m["id"] for m in response.json()["data"]]
    except (ValueError, KeyError, TypeError) as e:
        if not required:
            return []
        raise ServeBenchError(f"{url}/v1/models is not an OpenAI model list: pass the model with --model") from e


async def run_point(target: ServeTarget, prompts: list[str], max_tokens: int, *, concurrency: int | None,
                    rate: float | None, seed: int, on_done: Callable[[], None] = lambda: None) -> dict:
    """Send every prompt (closed loop at `concurrency`, or Poisson arrivals at `rate` capped by
    `concurrency` when given) and return the point's figures."""
    gate = asyncio.Semaphore(concurrency) if concurrency else None
    rng = random.Random(seed)
    gaps = [rng.expovariate(rate) if rate else 0.0 for _ in prompts]
    results: list[RequestResult] = []

    async def one(prompt: str, client: httpx.AsyncClient) -> None:
        if gate is None:
            results.append(await send_request(client, target, prompt, max_tokens))
        else:
            async with gate:
                results.append(await send_request(client, target, prompt, max_tokens))
        on_done()

    async with _client(target, concurrency or len(prompts)) as client:
        started = time.perf_counter()
        tasks = []
        for prompt, gap in zip(prompts, gaps):
            if gap:
                await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(one(prompt, client)))
        await asyncio.gather(*tasks)
        duration = time.perf_counter() - started
    return point_figures(results, duration, concurrency=concurrency, rate=rate)


def point_figures(results: list[RequestResult], duration: float, *, concurrency: int | None, rate: float | None) -> dict:
    done = [r for r in results if r.ok]
    output_tokens = sum(r.output_tokens for r in done)
    prompt_tokens = sum(r.prompt_tokens or 0 for r in done)
    return {
        "concurrency": concurrency,
        "rate": rate,
        "completed": len(done),
        "failed": len(results) - len(done),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "duration_s": duration,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "request_throughput": len(done) / duration,
        "output_throughput": output_tokens / duration,
        "total_token_throughput": (prompt_tokens + output_tokens) / duration,
        "ttft_ms": summarize((r.ttft for r in done), 1000),
        "tpot_ms": summarize((r.tpot for r in done if r.tpot is not None), 1000),
        "itl_ms": summarize((gap for r in done for gap in r.itl), 1000),
        "e2e_ms": summarize((r.e2e for r in done), 1000),
        "requests": [{"ttft_s": r.ttft, "e2e_s": r.e2e, "prompt_tokens": r.prompt_tokens,
                      "output_tokens": r.output_tokens, "error": r.error} for r in results],
    }


async def run_sweep(target: ServeTarget, workload: Workload, points: list[tuple[int | None, float | None]],
                    on_point: Callable[[int, int | None, float | None], Callable[[], None]]) -> list[dict]:
    """One point per (concurrency, rate), each on its own block of prompts (so no point is served
    from an earlier point's prefix cache)."""
    figures = []
    for index, (concurrency, rate) in enumerate(points):
        prompts = workload.text_prompts(start=index * workload.num_prompts)
        on_done = on_point(index, concurrency, rate)
        point = await run_point(target, prompts, workload.output_len, concurrency=concurrency, rate=rate,
                                seed=workload.seed + index, on_done=on_done)
        if not point["completed"]:
            raise ServeBenchError(f"all {len(prompts)} requests failed: {point['errors'][0]}")
        figures.append(point)
    return figures


async def check_server(target: ServeTarget, workload: Workload) -> None:
    """One short test request that must succeed before any point is timed."""
    probe_prompt = workload.text_prompt(1 << 40)  # NOTE: outside every point's block of prompts
    async with _client(target, 1) as client:
        probe = await send_request(client, target, probe_prompt, min(workload.output_len, 2))
    if not probe.ok:
        raise ServeBenchError(f"the test request to {target.url}{ENDPOINTS[target.endpoint]} failed: {probe.error}")
