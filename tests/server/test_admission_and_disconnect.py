"""What keeps the server up: API keys, the queue limit (429), and clients that hang up."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from tests.server.sse import assert_ollama_error, assert_openai_error

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "Say hello"}]


def long_reply(prompt, params):
    return [f" w{i}" for i in range(400)]


def test_api_key_is_required_when_set(fake_server):
    server = fake_server(settings={"api_key": "sekrit"})
    body = {"model": "fake", "messages": USER}
    error = assert_openai_error(httpx.post(server.url + CHAT, json=body), 401, code="invalid_api_key")
    assert "API key" in error["message"]
    assert_openai_error(httpx.post(server.url + CHAT, json=body, headers={"Authorization": "Bearer nope"}), 401)
    # 401 comes first, whatever else is wrong with the request
    assert_openai_error(httpx.post(server.url + CHAT, content=b"{bad"), 401)
    assert_ollama_error(httpx.get(server.url + "/api/tags"), 401, contains="API key")
    ok = httpx.post(server.url + CHAT, json=body, headers={"Authorization": "Bearer sekrit"})
    assert ok.status_code == 200, ok.text
    assert httpx.get(server.url + "/api/tags", headers={"Authorization": "Bearer sekrit"}).status_code == 200
    assert httpx.get(server.url + "/health").status_code == 200  # liveness stays open
    assert httpx.get(server.url + "/metrics").status_code == 200


def test_queue_past_its_limit_is_429_with_retry_after(fake_server):
    server = fake_server(settings={"max_pending_seqs": 2}, reply=long_reply, step_delay=0.02)
    body = {"model": "fake", "messages": USER, "stream": True}
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", server.url + CHAT, json=body) as first, \
                client.stream("POST", server.url + CHAT, json=body) as second:
            assert first.status_code == second.status_code == 200
            busy = client.post(server.url + CHAT, json={**body, "stream": False})
            error = assert_openai_error(busy, 429, code="rate_limit_exceeded")
            assert busy.headers["Retry-After"] == "1" and "busy" in error["message"]
            busy = client.post(server.url + "/api/chat", json={"model": "fake", "messages": USER})
            assert_ollama_error(busy, 429, contains="busy")
            assert busy.headers["Retry-After"] == "1"
            # n=3 can never fit a limit of 2: that is the request's fault, not a busy server
            assert_openai_error(client.post(server.url + CHAT, json={**body, "n": 3}), 400, param="n")
        server.wait_idle()  # both streams were cut short: their places are back
        assert client.post(server.url + CHAT, json={**body, "stream": False, "max_tokens": 3}).status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    assert "localllm_requests_rejected_total 2.0" in metrics


def test_client_leaving_mid_stream_aborts_the_request(fake_server):
    server = fake_server(reply=long_reply, step_delay=0.01)
    with httpx.stream("POST", server.url + CHAT, json={"model": "fake", "messages": USER, "stream": True}) as r:
        lines = r.iter_lines()
        for _ in range(5):
            next(lines)
    server.wait_idle()
    [added] = server.engine.added
    assert server.engine.aborted == [added.request_id]
    assert server.engine.stats()["kv_blocks_used"] == 0
    metrics = httpx.get(server.url + "/metrics").text
    assert 'localllm_requests_total{finish_reason="abort"} 1.0' in metrics


def test_client_leaving_a_non_streaming_request_aborts_it(fake_server):
    server = fake_server(reply=long_reply, step_delay=0.01)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + CHAT, json={"model": "fake", "messages": USER}, timeout=0.5)
    server.wait_idle()
    assert len(server.engine.aborted) == 1


def test_client_leaving_an_ollama_stream_aborts_it(fake_server):
    server = fake_server(reply=long_reply, step_delay=0.01)
    with httpx.stream("POST", server.url + "/api/generate", json={"model": "fake", "prompt": "hi"}) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
    server.wait_idle()
    assert len(server.engine.aborted) == 1


def test_garbage_on_the_socket_does_not_take_the_server_down(fake_server):
    server = fake_server()
    host, port = server.url.removeprefix("http://").split(":")
    for payload in (b"\x00\xff garbage\r\n\r\n", b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 99999\r\n\r\n{"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1024)
    assert httpx.post(server.url + CHAT, json={"model": "fake", "messages": USER}).status_code == 200


def test_many_concurrent_requests_all_finish(fake_server):
    server = fake_server(step_delay=0.005)
    results = []

    def one(i):
        r = httpx.post(server.url + CHAT, json={"model": "fake", "messages": [{"role": "user", "content": f"n {i}"}]},
                       timeout=30)
        results.append(r.status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [200] * 24, results
    assert time.monotonic() - started < 30


def test_the_server_reads_the_engine_through_asyncllms_public_accessors(fake_server):
    server = fake_server()
    llm = server.llm
    assert llm.is_running and llm.error is None
    assert llm.tokenize("a b a") == server.engine.tokenize("a b a")[1] and len(llm.tokenize("a b a")) == 3
    assert llm.vocab_size == 1000 and llm.load_seconds == 0.25
    # /api/generate's `context` is checked against the vocabulary through the accessor.
    bad = httpx.post(server.url + "/api/generate", json={"model": "fake", "prompt": "x", "context": [999, 1000]})
    assert bad.status_code == 400 and "[0, 1000)" in bad.json()["error"]
    llm.shutdown()
    assert not llm.is_running and llm.error is None
    health = httpx.get(server.url + "/health")
    assert health.status_code == 503 and health.json() == {"status": "error", "error": "the engine stopped"}
