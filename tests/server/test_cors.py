"""Cross-origin (browser) access: none by default, only the origins `--allowed-origins` names."""

from __future__ import annotations

import httpx
import pytest

from localllm.server.cors import parse_origins

PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
BODY = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_no_cross_origin_access_by_default(fake_server):
    server = fake_server()
    origin = {"Origin": "http://localhost:3000"}
    response = httpx.get(server.url + "/v1/models", headers=origin)
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    preflight = httpx.options(server.url + "/v1/chat/completions", headers={**origin, **PREFLIGHT})
    assert "access-control-allow-origin" not in preflight.headers


def test_allowed_origins_get_preflights_and_headers_even_with_an_api_key(fake_server):
    server = fake_server(settings={"api_key": "k", "allowed_origins": ("http://localhost:3000", "http://127.0.0.1:*")})
    for origin in ("http://localhost:3000", "http://127.0.0.1:5173"):
        # A preflight carries no key: it is answered before the key is checked.
        preflight = httpx.options(server.url + "/v1/chat/completions", headers={"Origin": origin, **PREFLIGHT})
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        ok = httpx.post(server.url + "/v1/chat/completions", json=BODY, headers={"Origin": origin, "Authorization": "Bearer k"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == origin
        # A page may read the 401 too, so it can tell its user the key is wrong.
        denied = httpx.post(server.url + "/api/chat", json=BODY, headers={"Origin": origin})
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == origin
    for origin in ("http://evil.example", "http://127.0.0.1.evil.example", "https://localhost:3000"):
        preflight = httpx.options(server.url + "/v1/chat/completions", headers={"Origin": origin, **PREFLIGHT})
        assert preflight.status_code == 400 and "access-control-allow-origin" not in preflight.headers
        response = httpx.get(server.url + "/health", headers={"Origin": origin})
        assert "access-control-allow-origin" not in response.headers


def test_any_origin_when_asked(fake_server):
    server = fake_server(settings={"allowed_origins": ("*",)})
    response = httpx.get(server.url + "/api/tags", headers={"Origin": "http://anything.example"})
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers  # keys travel in headers, not cookies


def test_parse_origins():
    assert parse_origins(["http://localhost:3000/, http://localhost:*", "https://app.example.com"]) == (
        "http://localhost:3000", "http://localhost:*", "https://app.example.com")
    assert parse_origins(["*", "*"]) == ("*",)
    for bad in ("localhost:3000", "http://localhost:3000/path", "file:///tmp", "http://"):
        with pytest.raises(ValueError, match="not an origin"):
            parse_origins([bad])
