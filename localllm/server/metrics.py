"""Prometheus metrics on the server's own registry (one per app, so tests can run several).

Gauges come from the engine's stats() at scrape time; counters and histograms are updated as
requests stream (generation.py).
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0)
_E2E_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EngineCollector:
    def __init__(self, stats: Callable[[], dict]) -> None:
        self._stats = stats

    def collect(self):
        s = self._stats()
        for name, key, doc in (
            ("localllm_requests_running", "num_running", "Sequences running in the engine."),
            ("localllm_requests_waiting", "num_waiting", "Sequences waiting for the engine."),
            ("localllm_kv_blocks_used", "kv_blocks_used", "KV cache blocks held by requests."),
            ("localllm_kv_blocks_total", "kv_blocks_total", "KV cache blocks in the pool."),
        ):
            yield GaugeMetricFamily(name, doc, value=s.get(key, 0))
        for name, key, doc in (
            ("localllm_preemptions", "num_preemptions", "Requests preempted for want of KV blocks."),
            ("localllm_prefix_cache_queries", "prefix_cache_queries", "Prompt blocks looked up in the prefix cache."),
            ("localllm_prefix_cache_hits", "prefix_cache_hits", "Prompt blocks found in the prefix cache."),
        ):
            if key in s:
                yield CounterMetricFamily(name, doc, value=s[key])

    def describe(self):
        return []


class ServerMetrics:
    def __init__(self, stats: Callable[[], dict]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(stats))
        r = self.registry
        self.prompt_tokens = Counter("localllm_prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter("localllm_generation_tokens", "Tokens generated.", registry=r)
        self.requests = Counter(
            "localllm_requests", "Requests finished, by finish reason (abort: the client left).",
            ["finish_reason"], registry=r,
        )
        self.rejected = Counter("localllm_requests_rejected", "Requests refused: queue full (429).", registry=r)
        self.time_to_first_token = Histogram(
            "localllm_time_to_first_token_seconds", "From the request reaching the engine to its first token.",
            buckets=_TTFT_BUCKETS, registry=r,
        )
        self.inter_token_latency = Histogram(
            "localllm_inter_token_latency_seconds", "Time between a request's successive outputs.",
            buckets=_ITL_BUCKETS, registry=r,
        )
        self.e2e_latency = Histogram(
            "localllm_e2e_request_latency_seconds", "From the request reaching the engine to its end.",
            buckets=_E2E_BUCKETS, registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
