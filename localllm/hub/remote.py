"""Talking to the Hugging Face Hub through huggingface_hub: the file listing of a revision, and
one file downloaded into a partial directory, resumable and checked.

NOTE: huggingface_hub (2.x) deletes its partial file when a download fails, so an interrupted
pull would start every file over. We keep our own `.part` files, named by the content hash, and
hand huggingface_hub's http_get the bytes already there as `resume_size` (a Range request). A
file moves to its final name only after its size and hash match the listing.

Settings are read at call time, not at import: HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

from localllm.errors import ModelNotFoundError
from localllm.hub.errors import DownloadError, HubAccessError, HubUnreachableError, OfflineError
from localllm.hub.progress import FileMeter, MeteredFile, quiet_bar
from localllm.hub.variants import RemoteFile, RepoListing

DEFAULT_ENDPOINT = "https://huggingface.co"
Log = Callable[[str], None]


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def token() -> str | None:
    """HF_TOKEN when set; None lets huggingface_hub use the login stored by `hf auth login`."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


@contextlib.contextmanager
def hub_errors(repo: str, what: str = "", retry: str = "run the pull again to resume") -> Iterator[None]:
    """Turn huggingface_hub's and the HTTP client's exceptions into our one-line errors."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo}: {what}" if what else repo
    try:
        yield
    except OfflineModeIsEnabled:
        raise OfflineError(f"{where}: offline (HF_HUB_OFFLINE=1): the Hub is not contacted") from None
    except GatedRepoError as e:
        url = f"{endpoint()}/{repo}"
        status = e.response.status_code if e.response is not None else 0
        if status == 403:
            problem = f"gated repository, and your token has no access yet: request it at {url}"
        else:
            problem = f"gated repository: request access at {url}, then set HF_TOKEN to a token of that account"
        raise HubAccessError(repo, problem) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            repo, f"no such repository on {endpoint()} (if it is private, set HF_TOKEN to a token with access)"
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(repo, f"no such revision on {endpoint()}") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        if status == 401:
            raise HubAccessError(repo, "the Hub rejected the token (HTTP 401): check HF_TOKEN") from None
        if status == 404:
            raise DownloadError(f"{where}: the Hub has no such file (HTTP 404)") from None
        raise DownloadError(f"{where}: the Hub answered HTTP {status}; {retry}") from None
    except _network_errors() as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HubUnreachableError(f"{where}: network error with {endpoint()} ({reason}); {retry}") from None


def list_repo(repo: str, revision: str | None = None) -> RepoListing:
    """The files of a revision with their sizes and hashes (GET /api/models/{repo}/revision/{rev}?blobs=true)."""
    from huggingface_hub import HfApi

    with hub_errors(repo, "file listing", retry="check the network (and HF_ENDPOINT if set)"):
        info = HfApi(endpoint=endpoint()).model_info(
            repo, revision=revision or "main", files_metadata=True, token=token()
        )
    if not info.sha:
        raise DownloadError(f"{repo}: the Hub's answer names no commit (is HF_ENDPOINT a Hub?)")
    files = tuple(
        RemoteFile(
            path=s.rfilename,
            size=s.size if s.size is not None else (s.lfs.size if s.lfs else None),
            sha256=s.lfs.sha256 if s.lfs else None,
            git_sha1=None if s.lfs else s.blob_id,
        )
        for s in info.siblings or ()
    )
    return RepoListing(repo=repo, revision=info.sha, files=files, gated=bool(info.gated))


def part_name(f: RemoteFile) -> str:
    """Parts are named by content, so a part is only ever resumed by the same bytes."""
    digest = f.sha256 or f.git_sha1
    if digest:
        return f"{digest}.part"
    return hashlib.sha1(f"{f.path}\0{f.size}".encode()).hexdigest() + ".part"


def check_file(path: Path, f: RemoteFile) -> str | None:
    """None if the file has the listed size and hash, else what is wrong."""
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        return f"is {size} bytes, expected {f.size}"
    if f.sha256:
        digest = _digest(path, hashlib.sha256())
        if digest != f.sha256:
            return f"failed its sha256 check (expected {f.sha256[:12]}..., got {digest[:12]}...)"
    elif f.git_sha1:
        h = hashlib.sha1(f"blob {size}\0".encode())
        digest = _digest(path, h)
        if digest != f.git_sha1:
            return f"failed its git sha1 check (expected {f.git_sha1[:12]}..., got {digest[:12]}...)"
    return None


def _digest(path: Path, h) -> str:
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def download_file(
    repo: str, revision: str, f: RemoteFile, dest: Path, parts: Path, hf_cache_repo: Path | None = None,
    meter: FileMeter | None = None, cancel: threading.Event | None = None,
) -> bool:
    """Make `dest` hold `f` exactly. Returns True if bytes came over the network. A failed
    transfer keeps its part for the next pull; a finished part that fails its check is deleted.
    `meter` hears of the bytes as they land; setting `cancel` stops the transfer."""
    # NOTE: a file reaches its final name in a partial directory only after passing check_file,
    # so a resumed pull trusts what is already there by its size and does not hash it again.
    if dest.is_file() and (f.size is None or dest.stat().st_size == f.size):
        if meter is not None:
            meter.finish(dest.stat().st_size)
        return False
    parts.mkdir(parents=True, exist_ok=True)
    part = parts / part_name(f)
    if not part.exists() and hf_cache_repo is not None:
        _seed_from_hf_cache(hf_cache_repo, f, part)
    if meter is not None:
        meter.start(part.stat().st_size if part.exists() else 0)
    fetched = False
    if not (part.exists() and f.size is not None and part.stat().st_size == f.size):
        _fetch(repo, revision, f, part, meter, cancel)
        fetched = True
    problem = check_file(part, f)
    if problem is not None:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{repo}: {f.path} {problem}: the download is corrupt and was deleted; run the pull again"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, dest)
    if meter is not None:
        meter.finish(dest.stat().st_size)
    return fetched


def _fetch(repo: str, revision: str, f: RemoteFile, part: Path, meter: FileMeter | None = None,
           cancel: threading.Event | None = None) -> None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo, f.path, revision=revision, endpoint=endpoint())
    with hub_errors(repo, f.path):
        meta = get_hf_file_metadata(url, token=token(), endpoint=endpoint())  # HEAD; gated repos fail here
    if f.size is not None and meta.size is not None and meta.size != f.size:
        raise DownloadError(
            f"{repo}: {f.path}: the file listing says {f.size} bytes but the file's headers say {meta.size}"
        )
    expected = f.size if f.size is not None else meta.size
    resume = part.stat().st_size if part.exists() else 0
    if expected is not None and resume > expected:
        part.unlink()
        resume = 0
    headers = build_hf_headers(token=token())
    location = meta.location or url
    if _origin(location) != _origin(url):
        headers.pop("authorization", None)  # NOTE: a signed CDN url; the token stays on the Hub
    with hub_errors(repo, f.path), open(part, "ab") as raw:
        out = MeteredFile(raw, meter, cancel)
        try:
            http_get(location, out, resume_size=resume, headers=headers, expected_size=expected,
                     displayed_filename=f.path, **quiet_bar())
        except OSError as e:
            if "Consistency check failed" not in str(e):
                raise
            got = raw.tell()
            raise DownloadError(
                f"{repo}: {f.path}: received {got} bytes, expected {expected}; run the pull again to resume"
            ) from None


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = urlparse(url)
    return parsed.scheme, (parsed.hostname or "").lower(), parsed.port


def _seed_from_hf_cache(hf_cache_repo: Path, f: RemoteFile, part: Path) -> None:
    """Reuse a blob the Hugging Face cache already holds (blobs are named by etag: sha256 for
    LFS files, the git blob id otherwise); it is checked like any download."""
    digest = f.sha256 or f.git_sha1
    blob = hf_cache_repo / "blobs" / digest if digest else None
    if blob is None or not blob.is_file() or (f.size is not None and blob.stat().st_size != f.size):
        return
    try:
        os.link(blob, part)
    except OSError:
        shutil.copyfile(blob, part)
