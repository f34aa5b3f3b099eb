"""`pull`: a model name -> a complete, checked entry in the local store.

name -> ModelRef -> Variant (choose.py: the tag, --quantization, or the memory planner) -> the Hub's file
listing -> the files worth having -> each downloaded into <home>/partial/<slug>/ (resumable,
size- and hash-checked) -> manifest -> the directory renamed into <home>/models/ in one step.
ensure_model() is the "pull on first use" hook of the engine: resolve locally, else pull.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass

from localllm.errors import LocalLLMError, ModelNotFoundError
from localllm.hub import local_quant, remote
from localllm.hub.download import PLAN_FILE, download, format_size
from localllm.hub.errors import HubUnreachableError, OfflineError, StoreError
from localllm.hub.manifest import check_relative_path
from localllm.hub.progress import Progress
from localllm.hub.names import ModelRef, parse_name
from localllm.hub.store import Store, StoreEntry, default_store
from localllm.hub.choose import Choice, choose
from localllm.hub.variants import GGUF_PREFERENCE, FileSelection, RepoListing, Variant, select_files

QUANTIZATIONS = ("auto", "bf16", "fp8", "awq", "gptq", "gguf")
DEFAULT_CONTEXT = 8192  # tokens the planner keeps room for, unless told otherwise


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class PullResult:
    entry: StoreEntry
    downloaded: bool  # False: the store already held this revision
    notes: tuple[str, ...] = ()  # the plan, and anything the user should know

    @property
    def path(self) -> str:
        return str(self.entry.path)


def pull(
    name: str,
    quantization: str = "auto",
    *,
    revision: str | None = None,
    context: int = DEFAULT_CONTEXT,
    memory=None,
    device: str = "auto",
    store: Store | None = None,
    log=_stderr,
    quantize_options: dict | None = None,
    progress: Progress | None = None,
) -> PullResult:
    """Pull `name` into the store. `memory` (a localllm.quant.fit.DeviceMemory) is probed when
    the planner needs it and none is given; `device` is where a local quantization runs, and
    `quantize_options` are QuantizeOptions fields for it (calibration size, ...). `progress`
    receives PullProgress events (bytes of each file, layers of a local quantization)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    store = store or default_store()
    ref = parse_name(name)
    if ref.kind == "path":
        raise LocalLLMError(f"{name}: a local path, nothing to pull (run it directly)")
    notes: list[str] = []
    choice = choose(ref, quantization, context, memory, device, notes)
    if choice.quantize is None:
        return _pull_variant(ref, choice.variant, revision, store, notes, log, progress)
    return _pull_and_quantize(ref, choice, revision, store, notes, log, progress, device, quantize_options)


def ensure_model(name: str, *, device: str = "auto", log=_stderr, progress: Progress | None = None) -> str:
    """The local path of `name`, pulling it first when it is a Hub name not in the store
    (`log` hears the pull's messages, `progress` its PullProgress events)."""
    from localllm.hub.resolve import resolve_model

    try:
        return resolve_model(name)
    except ModelNotFoundError:
        ref = parse_name(name)  # unknown names fail here, with their hint, before any network
        if ref.kind == "path":
            raise
    log(f"{ref.display} is not in the store: pulling it")
    result = pull(name, device=device, log=log, progress=progress)
    for note in result.notes:
        log(note)
    return result.path


# ---------------------------------------------------------------- quantize after pull


def _pull_and_quantize(ref, choice: Choice, revision, store: Store, notes: list[str], log, progress, device: str,
                       options: dict | None) -> PullResult:
    name, method = ref.alias.name, choice.quantize
    existing = _intact(store.get(name, method), log)
    if existing is not None and remote.is_offline():
        return PullResult(existing, False, (*notes, "offline: using the copy in the store"))
    base = _pull_variant(ref, choice.variant, revision, store, notes, log, progress)
    notes = list(base.notes)
    if existing is not None and existing.manifest.revision == base.entry.manifest.revision:
        return PullResult(existing, False, (*notes, f"{existing.manifest.display_name} is up to date"))
    with _locked(store, name, method, log):
        entry = local_quant.quantize_into_store(store, base.entry, name, method, ref.text, log, device=device,
                                                options=options, progress=progress)
    source = base.entry.manifest
    notes.append(f"quantized here from {source.display_name}, which stays in the store "
                 f"(`localllm rm {source.display_name}` frees {format_size(source.size)})")
    return PullResult(entry, True, tuple(notes))


@contextlib.contextmanager
def _locked(store: Store, name: str, tag: str, log):
    """One process at a time writes an entry; a second pull of it waits, saying so."""
    from filelock import Timeout

    lock = store.lock(name, tag)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"another pull of {name}{':' + tag if tag else ''} is running; waiting for it")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


# ---------------------------------------------------------------- fetching


def _stored(store: Store, variant: Variant) -> StoreEntry | None:
    if variant.precision is None:  # a plain repo: safetensors, or a GGUF stored as hf.co/org/repo
        found = store.find((variant.repo, f"hf.co/{variant.repo}"))
        return found[0] if found else None
    if variant.tag or variant.precision != "gguf":
        return store.get(variant.name, variant.tag)
    for quant in GGUF_PREFERENCE:  # a GGUF asked for without a quantization: any we hold
        entry = store.get(variant.name, quant.lower())
        if entry is not None:
            return entry
    found = store.find((variant.name,))
    return found[0] if found else None


def _pull_variant(ref: ModelRef, variant: Variant, revision, store: Store, notes: list[str], log,
                  progress: Progress | None) -> PullResult:
    shown_tag = variant.tag or ("gguf" if variant.precision == "gguf" and variant.name != f"hf.co/{variant.repo}" else "")
    display = variant.name + (f":{shown_tag}" if shown_tag else "")
    existing = _stored(store, variant)
    if remote.is_offline():
        if existing is not None:
            existing.check_files()  # offline, a damaged copy cannot be repaired: say so
            return PullResult(existing, False, (*notes, "offline: using the copy in the store"))
        raise OfflineError(f"offline (HF_HUB_OFFLINE=1): {display} is not in the store; {_missing(store, variant)}")
    try:
        listing = remote.list_repo(variant.repo, revision)
    except HubUnreachableError as e:
        if existing is None:
            raise HubUnreachableError(f"{e}; {display} is not in the store") from None
        existing.check_files()
        return PullResult(existing, False, (*notes, f"warning: {e}; using the copy in the store"))
    selection = select_files(listing, variant)
    for f in selection.files:
        check_relative_path(f.path, f"{variant.repo} file listing")
    tag = variant.tag or (selection.quant.lower() if selection.format == "gguf" and selection.quant else "")
    name = variant.name
    if variant.precision is None and selection.format == "gguf":
        name = f"hf.co/{variant.repo}"  # NOTE: GGUF picks are named as Ollama names them
    existing = _intact(store.get(name, tag), log)
    if existing is not None and _same_files(existing, listing, selection):
        return PullResult(existing, False, (*notes, f"{existing.manifest.display_name} is up to date"))
    with _locked(store, name, tag, log):
        entry = download(ref, variant, listing, selection, name, tag, existing, store, log, progress)
    return PullResult(entry, True, tuple(notes))


def _intact(entry: StoreEntry | None, log) -> StoreEntry | None:
    """The entry if its files are all there at their sizes; None (to pull it again) if damaged."""
    if entry is None:
        return None
    try:
        entry.check_files()
    except StoreError as e:
        log(f"{e.where}: {e.problem}; pulling it again")
        return None
    return entry


def _same_files(entry: StoreEntry, listing: RepoListing, selection: FileSelection) -> bool:
    have = {(f.path, f.size, f.sha256, f.git_sha1) for f in entry.manifest.files}
    want = {(f.path, f.size, f.sha256, f.git_sha1) for f in selection.files}
    return entry.manifest.revision == listing.revision or have == want


def _missing(store: Store, variant: Variant) -> str:
    """What an offline pull lacks: the files of an interrupted download, or the whole repo."""
    for partial in store.partials():
        plan_path = partial / PLAN_FILE
        if not partial.name.startswith(variant.name.replace("/", "--")) or not plan_path.is_file():
            continue
        try:
            plan = json.loads(plan_path.read_text(encoding="utf-8"))
            missing = [f["path"] for f in plan["files"] if not (partial / check_relative_path(f["path"], str(plan_path))).is_file()]
        except (OSError, ValueError, KeyError, TypeError, LocalLLMError):
            continue
        if plan.get("repo") == variant.repo and missing:
            return f"an interrupted download of {variant.repo} still lacks {len(missing)} file(s): {', '.join(missing)}"
    return f"it needs the files of {variant.repo} from the Hub"
