"""Load on loopback: 64 concurrent streaming clients against `localllm serve` on SmolLM2, a
quarter hanging up mid-stream. Bounded: every client has a deadline, the whole run 240 s.

Run it alone to see the figures: `python -m pytest tests/server/test_load.py -s`.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.server.load_client import run_load

pytestmark = pytest.mark.slow


def test_64_streaming_clients_a_quarter_hanging_up(real_server):
    before = real_server.wait_idle()
    report = asyncio.run(run_load(real_server.url, num_clients=64, hang_up_every=4, hang_up_after=3, max_tokens=32))
    print("\nload test:", report.summary())

    problems = {r.index: r.problems for r in report.results if r.problems}
    assert not problems, problems
    hung_up = [r for r in report.results if r.hung_up]
    finished = [r for r in report.results if not r.hung_up]
    assert len(hung_up) == 16 and len(finished) == 48
    assert all(r.num_content_chunks == 3 for r in hung_up)
    assert all(r.text for r in finished)

    # The hung-up requests were aborted in the engine and every block came back.
    after = real_server.wait_idle(timeout=15)
    assert after["localllm_kv_blocks_used"] == 0
    aborted = after.get('localllm_requests_total{finish_reason="abort"}', 0) - before.get(
        'localllm_requests_total{finish_reason="abort"}', 0)
    assert aborted == 16
    done = sum(after.get(f'localllm_requests_total{{finish_reason="{r}"}}', 0) - before.get(
        f'localllm_requests_total{{finish_reason="{r}"}}', 0) for r in ("stop", "length"))
    assert done == 48

    # And it still answers.
    response = httpx.post(real_server.url + "/v1/chat/completions", timeout=60, json={
        "model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]


def test_hanging_up_frees_the_blocks_at_once(real_server):
    """One long request, dropped after two chunks: its blocks are free well before it could
    have finished (it would run 1500 tokens, tens of seconds on this machine)."""
    import time

    real_server.wait_idle()
    body = {"model": "smollm2", "stream": True, "max_tokens": 1500, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Write a long story."}]}
    with httpx.stream("POST", real_server.url + "/v1/chat/completions", json=body, timeout=60) as response:
        lines = (line for line in response.iter_lines() if line)
        next(lines), next(lines), next(lines)
        held = real_server.metrics()
        assert held["localllm_kv_blocks_used"] > 0 and held["localllm_requests_running"] == 1
        left = time.monotonic()
    real_server.wait_idle(timeout=3)
    assert time.monotonic() - left < 3
