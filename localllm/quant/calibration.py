"""Calibration and held-out text, tokenized into fixed-length windows.

The built-in corpus is the Python reference manual's topic pages in the standard library
(`pydoc_data.topics`: ~465k characters, offline), cut at paragraph breaks into pieces of about
PIECE_CHARS characters (topics in name order). Every eighth piece is held out for the quality
report and never used to calibrate, so the report's perplexities are measured on text the method
did not see: ~58k characters, ~27 windows of 512 SmolLM2 tokens. (Whole topics held out gave
11k characters, 5 windows: too few to tell a 1% change from the noise.) A user's calibration
file replaces only the calibration part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from localllm.errors import LocalLLMError

HELDOUT_EVERY = 8
PIECE_CHARS = 2000


class CalibrationError(LocalLLMError):
    """A calibration file that is missing, unreadable or too short."""


@dataclass
class CalibrationData:
    samples: torch.Tensor  # int64 [S, L] calibration windows
    heldout: torch.Tensor  # int64 [E, L] held-out windows (the quality report)
    source: str  # "built-in (pydoc_data.topics)" or the file's path


def builtin_texts() -> tuple[str, str]:
    """(calibration text, held-out text) from pydoc_data.topics."""
    from pydoc_data.topics import topics

    pieces = [piece for name in sorted(topics) for piece in _pieces(topics[name])]
    calib = [p for i, p in enumerate(pieces) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    heldout = [p for i, p in enumerate(pieces) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    return "\n\n".join(calib), "\n\n".join(heldout)


def _pieces(text: str) -> list[str]:
    """Consecutive paragraphs of text joined into pieces of at least PIECE_CHARS characters (the
    last one may be shorter)."""
    pieces, current, size = [], [], 0
    for paragraph in text.split("\n\n"):
        current.append(paragraph)
        size += len(paragraph) + 2
        if size >= PIECE_CHARS:
            pieces.append("\n\n".join(current))
            current, size = [], 0
    if current:
        pieces.append("\n\n".join(current))
    return pieces


def read_calibration_file(path: str) -> str:
    if not os.path.isfile(path):
        raise CalibrationError(f"calibration file {path!r} not found")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise CalibrationError(f"calibration file {path!r} cannot be read as UTF-8 text: {e}") from None
    if not text.strip():
        raise CalibrationError(f"calibration file {path!r} is empty")
    return text


def windows(token_ids: list[int], seq_len: int, count: int) -> torch.Tensor:
    """Up to `count` consecutive, non-overlapping windows of seq_len tokens: int64 [n, seq_len]."""
    n = min(count, len(token_ids) // seq_len)
    return torch.tensor(token_ids[: n * seq_len], dtype=torch.int64).view(n, seq_len)


def load_calibration(
    tokenize: Callable[[str], list[int]], num_samples: int, seq_len: int, num_heldout: int,
    calib_file: str | None = None,
) -> CalibrationData:
    """Calibration windows from calib_file (or the built-in corpus) and held-out windows from the
    built-in held-out topics. Raises CalibrationError when the text holds not one full window."""
    if num_samples < 1 or seq_len < 2:
        raise CalibrationError(f"need at least one sample of at least 2 tokens (got {num_samples} x {seq_len})")
    calib_text, heldout_text = builtin_texts()
    source = "built-in (pydoc_data.topics)"
    if calib_file is not None:
        calib_text, source = read_calibration_file(calib_file), calib_file
    samples = windows(tokenize(calib_text), seq_len, num_samples)
    if samples.shape[0] == 0:
        raise CalibrationError(f"calibration text {source} holds fewer than {seq_len} tokens (one sample)")
    heldout = windows(tokenize(heldout_text), seq_len, num_heldout)
    return CalibrationData(samples, heldout, source)
