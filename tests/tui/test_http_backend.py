"""`localllm chat --url`: the app against a small OpenAI-shaped server started here on
127.0.0.1 (`/v1/models`, `/v1/chat/completions` streaming server-sent events)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from localllm.tui.backend import BackendError
from localllm.tui.conversation import ASSISTANT, ERROR, USER
from localllm.tui.http_backend import HttpBackend
from localllm.tui.settings import ChatSettings
from tests.tui.conftest import SIZE, ready, roles, screen_text, send, until


class FakeOpenAI:
    """Answers each chat request with the next script: a list of content pieces, or
    ("status", code, message) for an error response. A piece None holds the stream open,
    sending keep-alive comments, until the client goes away."""

    def __init__(self) -> None:
        self.scripts: list = []
        self.bodies: list[dict] = []
        self.other_posts: list[str] = []  # paths of POSTs that were not a chat request
        self.disconnected = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _json(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._json(200, {"object": "list", "data": [
                        {"id": "smollm2", "object": "model", "max_model_len": 2048},
                        {"id": "qwen3-0.6b", "object": "model"},
                    ]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":  # a server without /tokenize, like Ollama
                    fake.other_posts.append(self.path)
                    self._json(404, {"error": {"message": "not found"}})
                    return
                fake.bodies.append(body)
                script = fake.scripts.pop(0) if fake.scripts else ["Hi", "!"]
                if isinstance(script, tuple):
                    self._json(script[1], {"error": {"message": script[2], "type": "invalid_request_error"}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    self._event({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
                    for piece in script:
                        if piece is None:
                            deadline = time.monotonic() + 10
                            while time.monotonic() < deadline:
                                self.wfile.write(b": keep-alive\n\n")
                                self.wfile.flush()
                                time.sleep(0.05)
                            return
                        self._event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                        time.sleep(0.01)
                    self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                    self._event({"choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": 5,
                                                          "prompt_tokens_details": {"cached_tokens": 16}}})
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    fake.disconnected.set()

            def _event(self, payload: dict) -> None:
                self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    fake = FakeOpenAI()
    yield fake
    fake.close()


async def test_answer_streams_from_the_server(make_app, server):
    server.scripts = [["The capital", " of France", " is **Paris**."]]
    app = make_app(HttpBackend(server.url), model_label=server.url,
                   settings=ChatSettings(temperature=0.0, max_tokens=20, seed=3, stop=("END",)))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.model_label == "smollm2"  # the server's first model
        assert "Message smollm2…" in screen_text(app)
        await send(pilot, "Capital of France?")
        text = screen_text(app)
        assert "The capital of France is Paris." in text and "cached 16" in text and "ctx 26/2048" in text
    answer = app.chat_screen.conversation.messages[-1]
    assert answer.content == "The capital of France is **Paris**."
    assert answer.meta["num_generated_tokens"] == 5 and answer.meta["num_prompt_tokens"] == 21
    body = server.bodies[0]
    assert body["model"] == "smollm2" and body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": "Capital of France?"}]
    assert (body["temperature"], body["max_tokens"], body["seed"], body["stop"]) == (0.0, 20, 3, ["END"])


async def test_escape_closes_the_connection(make_app, server):
    server.scripts = [["Counting 1, 2,", None], ["ok"]]
    app = make_app(HttpBackend(server.url, "smollm2"))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.chat_screen.prompt.load_text("count")
        await pilot.press("enter")
        await until(pilot, lambda: "Counting 1, 2," in screen_text(app), what="the first piece")
        await pilot.press("escape")
        await until(pilot, lambda: app.chat_screen.answering is None, timeout=2, what="the stop")
        assert server.disconnected.wait(5), "the server never saw the client go"
        assert app.chat_screen.conversation.messages[-1].meta["finish_reason"] == "abort"
        await pilot.pause()
        assert "ctx ?/2048" in screen_text(app)  # a dropped stream has no usage: unknown, not 0
        await send(pilot, "again")
        assert app.chat_screen.conversation.messages[-1].content == "ok"


async def test_a_server_error_is_a_message(make_app, server):
    server.scripts = [("status", 400, "prompt has 3000 tokens, more than max_model_len 2048 allows")]
    app = make_app(HttpBackend(server.url))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "long")
        assert roles(app) == [USER, ERROR]
        assert "server error 400: prompt has 3000 tokens" in app.chat_screen.conversation.messages[-1].content
        await send(pilot, "short")
        assert roles(app)[-1] == ASSISTANT


def test_load_names_the_problem(server):
    with pytest.raises(BackendError, match="does not serve 'nosuch' \\(it serves: smollm2, qwen3-0.6b\\)"):
        HttpBackend(server.url, "nosuch").load(lambda step: None)
    info = HttpBackend(server.url + "/v1", "qwen3-0.6b").load(lambda step: None)
    assert (info.name, info.max_model_len) == ("qwen3-0.6b", None)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendError, match=f"cannot reach http://127.0.0.1:{port}"):
        HttpBackend(f"http://127.0.0.1:{port}").load(lambda step: None)
