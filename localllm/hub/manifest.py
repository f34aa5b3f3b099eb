"""The manifest of one store entry: where the files came from and what they must be.

    {"schema": 1, "name": "llama3.1-8b", "tag": "awq", "repo": "org/repo", "revision": "<sha>",
     "quantization": "awq", "format": "safetensors", "entry": ".", "size": 5733000000,
     "pulled_as": "llama3.1-8b", "created": "2026-11-22T13:00:00Z",
     "files": [{"path": "config.json", "size": 1234, "sha256": null, "git_sha1": "..."}, ...]}

NOTE: a manifest is written last, after every file passed its size and hash check, and the
entry directory is then renamed into place in one step: an entry with a manifest is complete.
Every path in a manifest is checked on reading: relative, normalized, no `..`, no drive, so a
damaged or hostile manifest cannot make the store read or delete outside its entry.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from localllm.hub.errors import StoreError

SCHEMA = 1
MANIFEST = "manifest.json"
FORMATS = ("safetensors", "gguf")
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the entry directory, `/`-separated
    size: int
    sha256: str | None = None  # LFS files: the content's sha256
    git_sha1: str | None = None  # other files: git's blob id, sha1("blob {size}\0" + content)


@dataclass(frozen=True)
class Manifest:
    name: str  # alias, org/repo or hf.co/org/repo
    tag: str  # "" or the variant: bf16, awq, gptq, fp8, or a GGUF quantization (q4_k_m)
    repo: str
    revision: str  # the commit the files were taken from
    quantization: str  # bf16, fp16, fp32, awq, gptq, fp8, compressed-tensors, or gguf:Q4_K_M
    format: str  # safetensors | gguf
    entry: str  # "." (a model directory) or the .gguf file's path
    files: tuple[FileEntry, ...]
    pulled_as: str = ""
    created: str = ""  # ISO 8601, UTC
    schema: int = SCHEMA
    extra: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def display_name(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "")

    def to_json(self) -> str:
        data = asdict(self)
        data["files"] = [asdict(f) for f in self.files]
        data["size"] = self.size
        if not data["extra"]:
            del data["extra"]
        return json.dumps(data, indent=2) + "\n"


def check_relative_path(path: object, where: str) -> str:
    """A file path inside an entry: relative, normalized, `/`-separated, nothing that climbs out."""
    if not isinstance(path, str) or not path:
        raise StoreError(where, f"file path {path!r} is not a non-empty string")
    bad = (
        path.startswith(("/", "\\"))
        or "\\" in path
        or "\x00" in path
        or re.match(r"^[A-Za-z]:", path) is not None
        or os.path.isabs(path)
        or posixpath.normpath(path) != path
        or any(part in ("..", ".", "") for part in path.split("/"))
    )
    if bad:
        raise StoreError(where, f"file path {path!r} leaves the store entry (absolute or `..`): refused")
    return path


def read_manifest(path: Path) -> Manifest:
    """Parse and check a manifest; StoreError naming the file otherwise."""
    where = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(where, "missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise StoreError(where, f"cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise StoreError(where, f"invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise StoreError(where, "not a JSON object")
    if data.get("schema") != SCHEMA:
        raise StoreError(where, f"unknown manifest schema {data.get('schema')!r} (this version reads {SCHEMA})")
    for key in ("name", "repo", "revision", "quantization", "format", "entry"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise StoreError(where, f"field {key!r} is missing or not a string")
    if not isinstance(data.get("tag", ""), str):
        raise StoreError(where, "field 'tag' is not a string")
    if data["format"] not in FORMATS:
        raise StoreError(where, f"unknown format {data['format']!r}")
    raw_files = data.get("files")
    if not isinstance(raw_files, list) or not raw_files:
        raise StoreError(where, "no files listed")
    files = []
    for item in raw_files:
        if not isinstance(item, dict):
            raise StoreError(where, "a file entry is not an object")
        file_path = check_relative_path(item.get("path"), where)
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise StoreError(where, f"{file_path}: size {size!r} is not a byte count")
        sha256, git_sha1 = item.get("sha256"), item.get("git_sha1")
        for digest, length in ((sha256, 64), (git_sha1, 40)):
            if digest is not None and (not isinstance(digest, str) or len(digest) != length or not _HEX.match(digest)):
                raise StoreError(where, f"{file_path}: {digest!r} is not a hex digest")
        files.append(FileEntry(file_path, size, sha256, git_sha1))
    entry = data["entry"]
    if entry != ".":
        check_relative_path(entry, where)
        if entry not in {f.path for f in files}:
            raise StoreError(where, f"entry {entry!r} is not one of the listed files")
    return Manifest(
        name=data["name"],
        tag=data.get("tag", ""),
        repo=data["repo"],
        revision=data["revision"],
        quantization=data["quantization"],
        format=data["format"],
        entry=entry,
        files=tuple(files),
        pulled_as=str(data.get("pulled_as", "")),
        created=str(data.get("created", "")),
        extra=data.get("extra") if isinstance(data.get("extra"), dict) else {},
    )


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write atomically (temp file + rename) so a reader sees the old manifest or the new one."""
    target = directory / MANIFEST
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, target)
    return target
