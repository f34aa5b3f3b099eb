"""Concurrent streaming clients for the load test: some read to the end, some hang up early.

Each client checks its own stream as it reads it (every event a JSON chunk of one id, the role
first, exactly one finish_reason, then the usage chunk, then [DONE]); the report gives the
figures the README records.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class ClientResult:
    index: int
    hung_up: bool
    ttft: float | None = None  # seconds from sending the request to the first content
    num_content_chunks: int = 0
    completion_tokens: int | None = None  # from the usage chunk (finished streams)
    finish_reason: str | None = None
    text: str = ""
    problems: list[str] = field(default_factory=list)


def _check_chunk(result: ClientResult, chunk: dict, ids: set[str], state: dict) -> None:
    ids.add(chunk.get("id"))
    if chunk.get("object") != "chat.completion.chunk":
        result.problems.append(f"bad object {chunk.get('object')!r}")
    if not chunk["choices"]:
        if chunk.get("usage") is None:
            result.problems.append("a chunk with no choices and no usage")
        result.completion_tokens = chunk["usage"]["completion_tokens"]
        state["usage_seen"] = True
        return
    if state.get("usage_seen"):
        result.problems.append("a choice chunk after the usage chunk")
    choice = chunk["choices"][0]
    delta = choice["delta"]
    if not state.get("role_seen"):
        state["role_seen"] = True
        if delta.get("role") != "assistant":
            result.problems.append(f"first delta has no assistant role: {delta}")
    if choice["finish_reason"] is not None:
        if result.finish_reason is not None:
            result.problems.append("two finish_reasons")
        result.finish_reason = choice["finish_reason"]


async def run_client(client: httpx.AsyncClient, url: str, index: int, hang_up_after: int | None, max_tokens: int,
                     model: str) -> ClientResult:
    result = ClientResult(index, hung_up=hang_up_after is not None)
    body = {
        "model": model, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": max_tokens,
        "temperature": 0.8, "seed": index,
        "messages": [{"role": "user", "content": f"Tell me one short fact about the number {index}."}],
    }
    started = time.perf_counter()
    ids: set[str] = set()
    state: dict = {}
    done = False
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            result.problems.append(f"status {response.status_code}: {(await response.aread())[:200]!r}")
            return result
        async for line in response.aiter_lines():
            if not line:
                continue
            if not line.startswith("data: "):
                result.problems.append(f"not an SSE data line: {line[:80]!r}")
                continue
            payload = line[len("data: "):]
            if payload == "[DONE]":
                done = True
                continue
            if done:
                result.problems.append("data after [DONE]")
            chunk = json.loads(payload)
            _check_chunk(result, chunk, ids, state)
            content = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
            if content:
                if result.ttft is None:
                    result.ttft = time.perf_counter() - started
                result.num_content_chunks += 1
                result.text += content
                if hang_up_after is not None and result.num_content_chunks >= hang_up_after:
                    return result  # leaving the block closes the connection mid-stream
    if not result.hung_up:
        if not done:
            result.problems.append("no [DONE]")
        if result.finish_reason not in ("stop", "length"):
            result.problems.append(f"finish_reason {result.finish_reason!r}")
        if result.completion_tokens is None or not 1 <= result.completion_tokens <= max_tokens:
            result.problems.append(f"usage completion_tokens {result.completion_tokens}")
        if len(ids) != 1:
            result.problems.append(f"chunk ids {ids}")
    return result


@dataclass
class LoadReport:
    results: list[ClientResult]
    wall_seconds: float

    @property
    def tokens(self) -> int:
        # Finished streams report their tokens; a client that hung up counts what it received.
        return sum(r.completion_tokens if r.completion_tokens is not None else r.num_content_chunks for r in self.results)

    def ttft_percentile(self, q: float) -> float:
        values = sorted(r.ttft for r in self.results if r.ttft is not None)
        return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]

    def summary(self) -> str:
        return (
            f"{len(self.results)} streaming clients ({sum(r.hung_up for r in self.results)} hung up): "
            f"{self.tokens} tokens in {self.wall_seconds:.1f} s = {self.tokens / self.wall_seconds:.1f} tok/s aggregate; "
            f"TTFT p50 {self.ttft_percentile(50):.2f} s, p99 {self.ttft_percentile(99):.2f} s"
        )


async def run_load(url: str, num_clients: int = 64, hang_up_every: int = 4, hang_up_after: int = 3,
                   max_tokens: int = 32, model: str = "smollm2", timeout: float = 240.0) -> LoadReport:
    limits = httpx.Limits(max_connections=num_clients + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0), limits=limits) as client:
        started = time.perf_counter()
        tasks = [
            run_client(client, url, i, hang_up_after if i % hang_up_every == 0 else None, max_tokens, model)
            for i in range(num_clients)
        ]
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=timeout)
        return LoadReport(list(results), time.perf_counter() - started)


def main() -> None:
    """`python -m tests.server.load_client --url http://127.0.0.1:8000`: the load test's clients
    against any running server; prints the figures."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--hang-up-every", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    report = asyncio.run(run_load(args.url, args.clients, args.hang_up_every, 3, args.max_tokens, args.model))
    problems = [r.problems for r in report.results if r.problems]
    print(report.summary() + (f"; {len(problems)} malformed streams: {problems[:3]}" if problems else "; every stream well-formed"))


if __name__ == "__main__":
    main()
