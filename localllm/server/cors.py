"""Cross-origin requests from web pages. Off by default: a browser page on another origin gets no
CORS headers, so it cannot read answers (nor send JSON bodies, which need a preflight). Editors
and SDKs are not browsers and never need it. `--allowed-origins` lists the origins to let in:
exact ones (`http://localhost:3000`), patterns with `*` (`http://localhost:*`), or `*` for any.

NOTE: vLLM allows every origin by default and Ollama every localhost origin; a page the user
merely visits could then drive the model (and read its answers). Opt-in is the safe default.
"""

from __future__ import annotations

import re
from typing import Iterable

from starlette.middleware.cors import CORSMiddleware

_ORIGIN = re.compile(r"^[a-z][a-z0-9+.\-]*://[^/\s?#]+$")


def parse_origins(values: Iterable[str]) -> tuple[str, ...]:
    """Origins from repeated and/or comma-separated values; ValueError names a bad one."""
    origins = []
    for value in values:
        for origin in value.split(","):
            origin = origin.strip().rstrip("/")
            if not origin:
                continue
            if origin != "*" and not _ORIGIN.match(origin.lower()):
                raise ValueError(f"not an origin: {origin!r} (expected scheme://host[:port], a pattern with *, or *)")
            origins.append(origin)
    return tuple(dict.fromkeys(origins))


def _pattern(origins: Iterable[str]) -> str | None:
    patterns = [re.escape(o).replace(r"\*", r"[^/]*") for o in origins if "*" in o]
    return "|".join(patterns) or None


def add_cors(app, origins: tuple[str, ...]) -> None:
    """Answer preflights and tag responses for the allowed origins. Added last, so it is the
    outermost layer: preflights (which carry no API key) are answered before the key check, and
    a 401 still carries the headers a page needs to read it."""
    if not origins:
        return
    exact = ["*"] if "*" in origins else [o for o in origins if "*" not in o]
    app.add_middleware(
        CORSMiddleware,
        allow_origins=exact,
        allow_origin_regex=None if "*" in origins else _pattern(origins),
        allow_methods=["*"],
        allow_headers=["*"],
        allow_credentials=False,  # NOTE: keys travel in Authorization headers, never cookies
        expose_headers=["Retry-After"],
    )
