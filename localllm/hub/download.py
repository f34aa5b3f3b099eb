"""Downloading a selection of files into a store entry: the partial directory (with the plan a
resumed or offline pull reads), several files at once, then the manifest and the publish.

NOTE: up to DOWNLOAD_WORKERS files transfer at once. When one fails, the files not yet started
are skipped and those under way finish (their bytes are kept either way); the first error is
raised. Ctrl+C cancels the transfers under way, whose parts stay for the next pull to resume.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from localllm.errors import LocalLLMError
from localllm.hub import remote
from localllm.hub.manifest import FileEntry, Manifest, check_relative_path
from localllm.hub.names import ModelRef
from localllm.hub.progress import DownloadTracker, Progress
from localllm.hub.store import Store, StoreEntry
from localllm.hub.variants import FileSelection, RepoListing, Variant

PLAN_FILE = ".pull.json"  # in a partial directory: what the pull is fetching (for offline reports)
DOWNLOAD_WORKERS = 4  # files transferred at once

T = TypeVar("T")


def run_bounded(job: Callable[[T, threading.Event], object], items: Iterable[T], workers: int) -> None:
    """job(item, cancel) for every item, `workers` at a time. The first exception stops items
    not yet started and is raised once those under way have ended; an interrupt of the caller
    (Ctrl+C) sets `cancel`, which the jobs under way watch."""
    cancel, failed = threading.Event(), threading.Event()

    def run(item: T) -> None:
        if failed.is_set():
            return  # NOTE: another item failed; this one was queued, never started
        try:
            job(item, cancel)
        except BaseException:
            failed.set()
            raise

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="localllm-pull")
    try:
        futures = [pool.submit(run, item) for item in items]
        finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        wait(pending)
        for future in futures:
            if not future.cancelled() and future.exception() is not None:
                raise future.exception()
    except BaseException:
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def download(ref: ModelRef, variant: Variant, listing: RepoListing, selection: FileSelection, name: str, tag: str,
             existing: StoreEntry | None, store: Store, log, progress: Progress | None = None) -> StoreEntry:
    """Fetch the selected files into the entry's partial directory, DOWNLOAD_WORKERS at a time,
    then publish it with its manifest."""
    from localllm.hub.resolve import hf_cache_dir

    partial = store.partial_dir(name, tag)
    partial.mkdir(parents=True, exist_ok=True)
    _drop_stale(partial, selection)
    plan = {"repo": listing.repo, "revision": listing.revision,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256, "git_sha1": f.git_sha1}
                      for f in selection.files]}
    (partial / PLAN_FILE).write_text(json.dumps(plan, indent=2), encoding="utf-8")
    total = sum(f.size or 0 for f in selection.files)
    log(f"pulling {name}{':' + tag if tag else ''} from {listing.repo} (revision {listing.revision[:12]}): "
        f"{len(selection.files)} file(s), {format_size(total)}")
    if existing is not None:
        _reuse_unchanged(existing, selection, partial)
    hf_repo = hf_cache_dir() / ("models--" + listing.repo.replace("/", "--"))
    parts = partial / ".parts"
    tracker = DownloadTracker({f.path: f.size for f in selection.files}, progress)

    def fetch(f, cancel):
        remote.download_file(listing.repo, listing.revision, f, partial / f.path, parts, hf_repo,
                             tracker.meter(f.path), cancel)

    run_bounded(fetch, selection.files, DOWNLOAD_WORKERS)
    shutil.rmtree(parts, ignore_errors=True)
    (partial / PLAN_FILE).unlink(missing_ok=True)
    manifest = Manifest(
        name=name,
        tag=tag,
        repo=listing.repo,
        revision=listing.revision,
        quantization=_quantization(partial, selection, variant),
        format=selection.format,
        entry=selection.entry,
        files=tuple(FileEntry(f.path, (partial / f.path).stat().st_size, f.sha256, f.git_sha1)
                    for f in selection.files),
        pulled_as=ref.text,
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    entry = store.publish(partial, manifest)
    log(f"{manifest.display_name}: {format_size(manifest.size)} in the store ({entry.directory})")
    return entry


def _drop_stale(partial: Path, selection: FileSelection) -> None:
    """An interrupted pull of an older revision: delete its finished files whose content changed
    (a resumed pull trusts finished files by their size)."""
    try:
        old = json.loads((partial / PLAN_FILE).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    want = {f.path: (f.size, f.sha256, f.git_sha1) for f in selection.files}
    for item in old if isinstance(old, list) else []:
        try:
            path = check_relative_path(item["path"], str(partial / PLAN_FILE))
            if want.get(path) != (item.get("size"), item.get("sha256"), item.get("git_sha1")):
                (partial / path).unlink(missing_ok=True)
        except (LocalLLMError, KeyError, TypeError, OSError):
            continue


def _reuse_unchanged(existing: StoreEntry, selection: FileSelection, partial: Path) -> None:
    """A newer revision of an entry we hold: hard-link the files whose content did not change."""
    old = {(f.path, f.size, f.sha256, f.git_sha1) for f in existing.manifest.files}
    for f in selection.files:
        dest = partial / f.path
        if (f.path, f.size, f.sha256, f.git_sha1) in old and not dest.exists() and (f.sha256 or f.git_sha1):
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(existing.directory / f.path, dest)
            except OSError:
                shutil.copyfile(existing.directory / f.path, dest)


def _quantization(directory: Path, selection: FileSelection, variant: Variant) -> str:
    if selection.format == "gguf":
        return f"gguf:{selection.quant}" if selection.quant else "gguf"
    if variant.precision:
        return variant.precision
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "unknown"
    quant = config.get("quantization_config") or {}
    method = str(quant.get("quant_method", "")).lower()
    if method == "compressed-tensors":
        weights = [g.get("weights") or {} for g in (quant.get("config_groups") or {}).values() if isinstance(g, dict)]
        if any(w.get("type") == "float" and w.get("num_bits") == 8 for w in weights):
            return "fp8"
        if any(w.get("type") == "int" and w.get("num_bits") == 4 for w in weights):
            return "w4a16"
        return method
    if method:
        return method
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, dtype)



def format_size(num_bytes: int) -> str:
    from localllm.quant.fit import format_gb

    return format_gb(num_bytes) if num_bytes >= 10**8 else f"{num_bytes / 1e6:.1f} MB"
