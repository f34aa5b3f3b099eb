"""The JSON record of one benchmark run. Every result carries the machine, the software versions,
the exact command and the workload next to its figures, so a number is never far from how it was
measured."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time

from localllm.bench.machine import machine_info, software_versions

SCHEMA_VERSION = 1
KINDS = ("throughput", "latency", "serve")


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: `localllm bench ...` whether it ran as the script or `python -m`."""
    argv = list(sys.argv if argv is None else argv)
    if argv and os.path.basename(argv[0]) in ("localllm", "__main__.py"):
        argv[0] = "localllm"
    return shlex.join(argv)


def new_record(kind: str, workload: dict, argv: list[str] | None = None, **fields) -> dict:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command_line(argv),
        "machine": machine_info(),
        "software": software_versions(),
        "workload": workload,
        **fields,
    }


def write_json(record: dict, path: str) -> None:
    """Write a file atomically (a reader never sees half of it). A path that exists and is not a
    regular file (/dev/null, /dev/stdout, a pipe) is written straight through: replacing it would
    put a plain file where the device or pipe was."""
    text = json.dumps(record, indent=2) + "\n"
    if os.path.exists(path) and not os.path.isfile(path):
        with open(path, "w") as f:
            f.write(text)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    partial = path + ".partial"
    with open(partial, "w") as f:
        f.write(text)
    os.replace(partial, path)
