"""The local model store: one directory per pulled model under $LOCALLLM_HOME.

    <home>/models/<slug>/manifest.json + files   complete entries (the only ones ever listed)
    <home>/partial/<slug>/                       a pull in progress or interrupted (resumable)
    <home>/partial/<slug>.lock                   held while a pull writes that entry
    <home>/trash/                                entries being replaced or removed

slug = name with `/` as `--`, then `@tag`: llama3.1-8b@awq, Qwen--Qwen3-0.6B, hf.co--org--repo@q4_k_m.
NOTE: entries appear and disappear by renaming whole directories within <home> (one file
system), so a reader sees an entry complete or not at all. Every slug is checked to name a
direct child of its parent directory: no name can reach outside the store.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from localllm.hub.errors import StoreError
from localllm.hub.manifest import MANIFEST, Manifest, read_manifest, write_manifest
from localllm.hub.names import REPO_ID, TAG

_NAME = re.compile(r"^(?:hf\.co/)?[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:@[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def entry_slug(name: str, tag: str = "") -> str:
    """The directory name of an entry; StoreError for anything that could escape the store."""
    bare = name[len("hf.co/"):] if name.startswith("hf.co/") else name
    ok = (
        _NAME.match(name) is not None
        and ".." not in name
        and "--" not in name
        and (bare.count("/") == 0 or REPO_ID.match(bare) is not None)
        and (not tag or TAG.match(tag) is not None)
    )
    if not ok:
        raise StoreError(f"{name}:{tag}" if tag else name, "not a valid store name: refused")
    slug = name.replace("/", "--") + (f"@{tag}" if tag else "")
    if not _SLUG.match(slug) or len(slug) > 200:
        raise StoreError(name, "not a valid store name: refused")
    return slug


def _child(parent: Path, slug: str) -> Path:
    child = parent / slug
    # NOTE: belt and braces: the slug regex already forbids separators and `..`.
    if child.parent != parent or child.name != slug or slug in (".", ".."):
        raise StoreError(slug, "not a valid store name: refused")
    return child


@dataclass(frozen=True)
class StoreEntry:
    directory: Path
    manifest: Manifest

    @property
    def path(self) -> Path:
        """What the loader opens: the entry directory or its .gguf file."""
        return self.directory if self.manifest.entry == "." else self.directory / self.manifest.entry

    @property
    def modified(self) -> float:
        return (self.directory / MANIFEST).stat().st_mtime

    def check_files(self) -> None:
        """Every listed file is there with its listed size (cheap: stat only)."""
        hint = f"pull it again (localllm pull {self.manifest.display_name})"
        for f in self.manifest.files:
            file = self.directory / f.path
            try:
                size = file.stat().st_size
            except OSError:
                raise StoreError(str(self.directory), f"{f.path} is missing", hint) from None
            if size != f.size:
                raise StoreError(str(file), f"is {size} bytes, the manifest says {f.size}: damaged", hint)


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models = self.root / "models"
        self.partial_root = self.root / "partial"
        self.trash = self.root / "trash"

    # ------------------------------------------------------------------ reading

    def entry_dir(self, name: str, tag: str = "") -> Path:
        return _child(self.models, entry_slug(name, tag))

    def get(self, name: str, tag: str = "") -> StoreEntry | None:
        """The complete entry for name:tag, or None. A damaged manifest raises StoreError."""
        directory = self.entry_dir(name, tag)
        if not (directory / MANIFEST).is_file():
            return None
        return self._load(directory)

    def _load(self, directory: Path) -> StoreEntry:
        manifest = read_manifest(directory / MANIFEST)
        if entry_slug(manifest.name, manifest.tag) != directory.name:
            raise StoreError(
                str(directory / MANIFEST), f"names {manifest.display_name!r}, which does not belong in {directory.name}"
            )
        return StoreEntry(directory, manifest)

    def entries(self, problems: list[str] | None = None) -> list[StoreEntry]:
        """Complete entries, sorted by name. Entries whose manifest fails its checks are left out
        (their one-line reasons go to `problems`)."""
        found = []
        for directory in self._children(self.models):
            if not (directory / MANIFEST).is_file():
                continue  # NOTE: no manifest = not complete; never listed
            try:
                found.append(self._load(directory))
            except StoreError as e:
                if problems is not None:
                    problems.append(str(e))
        return sorted(found, key=lambda e: e.manifest.display_name)

    def find(self, names: tuple[str, ...], tag: str | None = None) -> list[StoreEntry]:
        """Entries whose name is one of `names` (any tag when `tag` is None), newest first."""
        matches = [e for e in self.entries() if e.manifest.name in names and (tag is None or e.manifest.tag == tag)]
        return sorted(matches, key=lambda e: e.modified, reverse=True)

    def partials(self) -> list[Path]:
        return [d for d in self._children(self.partial_root) if d.is_dir()]

    @staticmethod
    def _children(parent: Path) -> Iterator[Path]:
        try:
            children = sorted(parent.iterdir())
        except OSError:
            return iter(())
        return iter(c for c in children if c.is_dir() and _SLUG.match(c.name))

    # ------------------------------------------------------------------ writing

    def partial_dir(self, name: str, tag: str = "") -> Path:
        return _child(self.partial_root, entry_slug(name, tag))

    def lock(self, name: str, tag: str = ""):
        """A file lock held while one process pulls name:tag (filelock, as huggingface_hub uses)."""
        from filelock import FileLock

        self.partial_root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.partial_root / f"{entry_slug(name, tag)}.lock"))

    def publish(self, partial: Path, manifest: Manifest) -> StoreEntry:
        """Write the manifest into a finished partial directory and move it into the store in one
        rename, replacing an older entry of the same name."""
        target = self.entry_dir(manifest.name, manifest.tag)
        write_manifest(partial, manifest)
        self.models.mkdir(parents=True, exist_ok=True)
        old = None
        if target.exists():
            old = self._to_trash(target)
        os.replace(partial, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return StoreEntry(target, manifest)

    def remove(self, entry: StoreEntry) -> None:
        """Take the entry out of the store in one rename, then delete its files."""
        if entry.directory.parent != self.models:
            raise StoreError(str(entry.directory), "is not an entry of this store: refused")
        shutil.rmtree(self._to_trash(entry.directory), ignore_errors=True)

    def remove_partial(self, directory: Path) -> None:
        if directory.parent != self.partial_root:
            raise StoreError(str(directory), "is not a partial download of this store: refused")
        shutil.rmtree(self._to_trash(directory), ignore_errors=True)

    def _to_trash(self, directory: Path) -> Path:
        self.trash.mkdir(parents=True, exist_ok=True)
        target = self.trash / f"{directory.name}.{uuid.uuid4().hex[:8]}"
        os.replace(directory, target)
        return target


def default_store() -> Store:
    from localllm.hub.resolve import localllm_home

    return Store(localllm_home())
