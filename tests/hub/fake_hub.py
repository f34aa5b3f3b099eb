"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, answering what huggingface_hub asks:

  GET  /api/models/{repo}[/revision/{rev}][?blobs=true]  model info: sha, siblings (size, blobId, lfs)
  HEAD /{repo}/resolve/{rev}/{path}   small files: 200 + ETag (git sha1), X-Repo-Commit, Content-Length
                                      LFS files: 302 to the CDN + X-Linked-Etag (sha256), X-Linked-Size
  GET  /{repo}/resolve/{rev}/{path}   the same, with the body (Range honoured)
  GET  {cdn}/blobs/{sha256}           LFS content, on a second port (another origin, as a CDN is)

Errors carry the Hub's headers: X-Error-Code RepoNotFound (401, as the Hub answers anonymous
callers), RevisionNotFound / EntryNotFound (404), GatedRepo (401 without a token, 403 with a token
that has no access). Faults can be scripted per file: cut the connection after N bytes, answer
statuses on the next requests, flip a byte, send a short body, or send it slowly (`peak_transfers`
counts the most bodies sent at once).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    gated: bool = False
    allowed_tokens: tuple[str, ...] = ()

    @property
    def sha(self) -> str:
        h = hashlib.sha1(self.repo_id.encode())
        for path in sorted(self.files):
            h.update(path.encode() + hashlib.sha256(self.files[path]).digest())
        return h.hexdigest()

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)


@dataclass
class Fault:
    cut_after: int | None = None  # first GET: send this many bytes, then drop the connection
    then_statuses: list[int] = field(default_factory=list)  # answer these on the next GETs
    corrupt: bool = False  # flip one byte (same size)
    short_by: int = 0  # send a body this much shorter, with a matching Content-Length
    delay: float = 0.0  # seconds to wait before sending the body (a slow transfer)


@dataclass
class Request:
    server: str  # "api" | "cdn"
    method: str
    path: str
    range: str | None
    authorization: str | None
    status: int = 0
    bytes_sent: int = 0


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.faults: dict[str, Fault] = {}  # by file path (any repo)
        self._requests: list[Request] = []
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self.in_flight = 0
        self.transfers = 0  # file bodies being sent now
        self.peak_transfers = 0  # the most at once so far

    # ------------------------------------------------------------------ setup

    def add_repo(self, repo_id: str, files: dict[str, bytes], **kwargs) -> FakeRepo:
        repo = FakeRepo(repo_id, dict(files), **kwargs)
        self.repos[repo_id] = repo
        return repo

    def start(self) -> "FakeHub":
        for role in ("api", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, role))
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[Request]:
        """Every request so far, once those already answered are recorded."""
        self.settle()
        return self._requests

    def settle(self, timeout: float = 2.0) -> int:
        """Wait until every request answered has been recorded; the number of requests so far."""
        import time

        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self._requests)

    def gets(self, path_suffix: str) -> list[Request]:
        """The GETs that carried content of a file (by repo path for small files, by blob for LFS)."""
        blobs = {hashlib.sha256(data).hexdigest() for r in self.repos.values()
                 for p, data in r.files.items() if p == path_suffix}
        return [r for r in self.requests if r.method == "GET" and r.status in (200, 206) and (
            r.path.endswith("/" + path_suffix) or any(r.path.endswith(b) for b in blobs))]

    def blob(self, sha256: str) -> tuple[str, bytes] | None:
        for repo in self.repos.values():
            for path, data in repo.files.items():
                if hashlib.sha256(data).hexdigest() == sha256:
                    return path, data
        return None


def _handler(hub: FakeHub, role: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self._serve(head=False)

        def do_HEAD(self) -> None:
            self._serve(head=True)

        # -------------------------------------------------------------- plumbing

        def _serve(self, head: bool) -> None:
            self.record = Request(role, self.command, self.path, self.headers.get("Range"),
                                  self.headers.get("Authorization"))
            with hub._lock:
                hub.in_flight += 1
            try:
                if role == "cdn":
                    self._cdn(head)
                else:
                    self._api(head)
            finally:
                hub.record(self.record)
                with hub._lock:
                    hub.in_flight -= 1

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"", head: bool = False,
                  length: int | None = None) -> None:
            self.record.status = status
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if not head and body:
                self.wfile.write(body)
                self.record.bytes_sent += len(body)

        def _error(self, status: int, code: str, message: str, head: bool, commit: str | None = None) -> None:
            headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
            if commit:
                headers["X-Repo-Commit"] = commit
            self._send(status, headers, json.dumps({"error": message}).encode(), head)

        # -------------------------------------------------------------- the Hub

        def _api(self, head: bool) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$", path)
            if m:
                return self._model_info(m.group(1), m.group(2) or "main", parse_qs(url.query), head)
            m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if m:
                return self._resolve(m.group(1), m.group(2), m.group(3), head)
            self._error(404, "NotFound", "no such route", head)

        def _repo(self, repo_id: str, revision: str, head: bool) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound", "Repository not found", head)
                return None
            if revision not in ("main", repo.sha):
                self._error(404, "RevisionNotFound", "Invalid rev id: " + revision, head)
                return None
            return repo

        def _model_info(self, repo_id: str, revision: str, query: dict, head: bool) -> None:
            repo = self._repo(repo_id, revision, head)
            if repo is None:
                return
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = []
            for p, data in sorted(repo.files.items()):
                sibling: dict = {"rfilename": p}
                if blobs:
                    sibling["size"] = len(data)
                    if repo.is_lfs(p):
                        sibling["blobId"] = hashlib.sha1(b"pointer " + data).hexdigest()
                        sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                    else:
                        sibling["blobId"] = git_sha1(data)
                siblings.append(sibling)
            body = {"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                    "gated": "manual" if repo.gated else False, "disabled": False, "siblings": siblings}
            self._send(200, {"Content-Type": "application/json"}, json.dumps(body).encode(), head)

        def _resolve(self, repo_id: str, revision: str, file: str, head: bool) -> None:
            repo = self._repo(repo_id, revision, head)
            if repo is None:
                return
            if repo.gated:
                auth = self.headers.get("Authorization") or ""
                token = auth.removeprefix("Bearer ").strip()
                if not token:
                    return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have "
                                       "access to it and be authenticated to access it. Please log in.", head)
                if token not in repo.allowed_tokens:
                    return self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not "
                                       "in the authorized list.", head)
            data = repo.files.get(file)
            if data is None:
                return self._error(404, "EntryNotFound", f"{file} does not exist", head, commit=repo.sha)
            if repo.is_lfs(file):
                sha = hashlib.sha256(data).hexdigest()
                return self._send(302, {"Location": f"{hub.cdn}/blobs/{sha}", "X-Repo-Commit": repo.sha,
                                        "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                                        "ETag": f'"{git_sha1(data)}"'}, b"", head)
            self._content(file, data, {"X-Repo-Commit": repo.sha, "ETag": f'"{git_sha1(data)}"'}, head)

        # -------------------------------------------------------------- the CDN and the faults

        def _cdn(self, head: bool) -> None:
            m = re.match(r"^/blobs/([0-9a-f]{64})$", urlparse(self.path).path)
            found = hub.blob(m.group(1)) if m else None
            if found is None:
                return self._send(404, {}, b"not found", head)
            self._content(found[0], found[1], {"ETag": f'"{m.group(1)}"'}, head)

        def _content(self, file: str, data: bytes, headers: dict[str, str], head: bool) -> None:
            if head:
                return self._body(file, data, headers, head)
            with hub._lock:
                hub.transfers += 1
                hub.peak_transfers = max(hub.peak_transfers, hub.transfers)
            try:
                self._body(file, data, headers, head)
            finally:
                with hub._lock:
                    hub.transfers -= 1

        def _body(self, file: str, data: bytes, headers: dict[str, str], head: bool) -> None:
            fault = hub.faults.get(file) if not head else None
            if fault and fault.delay:
                import time

                time.sleep(fault.delay)
            if fault and fault.then_statuses and fault.cut_after is None:
                return self._send(fault.then_statuses.pop(0), {}, b"busy", head)
            if fault and fault.corrupt:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            if fault and fault.short_by:
                data = data[: len(data) - fault.short_by]
            start = 0
            rng = self.headers.get("Range")
            if rng:
                m = re.match(r"bytes=(\d+)-$", rng)
                start = int(m.group(1)) if m else 0
            body = data[start:]
            headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            status = 200
            if rng:
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            if fault and fault.cut_after is not None:
                cut = fault.cut_after
                fault.cut_after = None  # once
                self.record.status = status
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:cut])
                self.record.bytes_sent = cut
                self.close_connection = True
                return
            self._send(status, headers, body, head)

    return Handler
