"""Progress of a pull, as typed events: the one source for the command line's bars and the chat's
loading screen.

pull() hands each PullProgress to its `progress` callback. A download emits one per file when it
starts, as its bytes arrive (at most every REPORT_INTERVAL seconds per file), and when it ends; a
quantization after the pull emits one per decoder layer. Each event carries the figures of its
item and of the whole pull, so a consumer keeps no sums of its own.

NOTE: events of a download come from its worker threads, one at a time (under the tracker's
lock), so `overall_done` never goes backwards.

The bytes are counted where they land: remote.py hands huggingface_hub's http_get a MeteredFile
(and a bar class that draws nothing, so its own tqdm bars stay off the terminal and the chat).
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

REPORT_INTERVAL = 0.1  # seconds between two byte events of one file
RATE_WINDOW = 3.0  # seconds of transfer a rate is measured over


@dataclass(frozen=True)
class PullProgress:
    stage: str  # "download" | "quantize"
    item: str  # the file being downloaded; the method being applied ("awq")
    done: int  # bytes of the file on disk / layers quantized
    total: int | None  # None: the size is not known
    rate: float  # bytes per second of this file (0 until measured; 0 for layers)
    overall_done: int  # bytes of every file of the pull / layers quantized
    overall_total: int | None
    overall_rate: float  # bytes per second of the whole pull
    finished: bool = False  # the item is complete (a file: on disk and checked)
    unit: str = "B"  # "B" | "layer"


Progress = Callable[[PullProgress], None]


class _Rate:
    """Bytes per second over the last RATE_WINDOW seconds of samples."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, fetched: int) -> float:
        self.samples.append((now, fetched))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW:
            self.samples.popleft()
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


class DownloadTracker:
    """Counts the bytes of a multi-file download from its worker threads and emits PullProgress.
    Bytes already on disk (finished files, resumed parts) count as done but not into the rate."""

    def __init__(self, sizes: dict[str, int | None], emit: Progress | None, clock=time.monotonic) -> None:
        self.sizes = sizes
        self.emit = emit
        self.clock = clock
        self.done = dict.fromkeys(sizes, 0)
        self.fetched = 0  # bytes that crossed the network in this pull
        self._file_fetched = dict.fromkeys(sizes, 0)
        self._rates = {path: _Rate() for path in sizes}
        self._overall = _Rate()
        self._last_report = dict.fromkeys(sizes, float("-inf"))
        self._lock = threading.Lock()
        total = sum(s or 0 for s in sizes.values())
        self.total = total if all(s is not None for s in sizes.values()) else None

    def meter(self, path: str) -> "FileMeter":
        return FileMeter(self, path)

    def _update(self, path: str, *, done: int | None = None, fetched: int = 0, finished: bool = False,
                force: bool = False) -> None:
        with self._lock:
            now = self.clock()
            if done is not None:
                self.done[path] = done
            self.done[path] += fetched
            self.fetched += fetched
            self._file_fetched[path] += fetched
            if self.emit is None or not (force or finished or now - self._last_report[path] >= REPORT_INTERVAL):
                return
            self._last_report[path] = now
            file_rate = self._rates[path].add(now, self._file_fetched[path])
            overall_rate = self._overall.add(now, self.fetched)
            self.emit(PullProgress("download", path, self.done[path], self.sizes[path], file_rate,
                                   sum(self.done.values()), self.total, overall_rate, finished))


class FileMeter:
    """What download_file reports about one file: the bytes it starts from, each chunk written,
    a reset (the server ignored a Range), the end."""

    def __init__(self, tracker: DownloadTracker, path: str) -> None:
        self.tracker, self.path = tracker, path

    def start(self, on_disk: int) -> None:
        self.tracker._update(self.path, done=on_disk, force=True)

    def add(self, num_bytes: int) -> None:
        self.tracker._update(self.path, fetched=num_bytes)

    def reset(self, on_disk: int) -> None:
        self.tracker._update(self.path, done=on_disk, force=True)

    def finish(self, size: int) -> None:
        self.tracker._update(self.path, done=size, finished=True)


class DownloadCancelled(Exception):
    """Raised inside a transfer when the pull is being stopped (another file failed, Ctrl+C):
    the bytes written so far stay in the part, for the next pull to resume."""


class MeteredFile:
    """The part file as http_get sees it: each write is reported to the meter, and refused once
    the pull is cancelled."""

    def __init__(self, raw, meter: FileMeter | None, cancel: threading.Event | None) -> None:
        self.raw, self.meter, self.cancel = raw, meter, cancel

    def write(self, data: bytes) -> int:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelled()
        written = self.raw.write(data)
        if self.meter is not None:
            self.meter.add(written)
        return written

    def truncate(self, size: int | None = None) -> int:
        # NOTE: http_get truncates when a server ignores the Range and starts the file over.
        result = self.raw.truncate(size)
        if self.meter is not None:
            self.meter.reset(self.raw.tell() if size is None else size)
        return result

    def __getattr__(self, name: str):
        return getattr(self.raw, name)


class _QuietBar:
    """A progress bar that shows nothing: pull reports bytes through its own events."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self) -> "_QuietBar":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        pass


@functools.cache
def quiet_bar() -> dict:
    """http_get's own tqdm bar would draw over ours (and over the chat): turned off where this
    huggingface_hub lets a caller choose the bar class."""
    import inspect

    from huggingface_hub.file_download import http_get

    return {"tqdm_class": _QuietBar} if "tqdm_class" in inspect.signature(http_get).parameters else {}


def layer_reporter(method: str, emit: Progress) -> Callable[[int, int], None]:
    """The quantizer's on_layer(done, total) as PullProgress events."""

    def on_layer(done: int, total: int) -> None:
        emit(PullProgress("quantize", method, done, total, 0.0, done, total, 0.0, done == total, "layer"))

    return on_layer


def format_bytes(num_bytes: float) -> str:
    """Decimal units, one decimal: 512 B, 98.3 KB, 1.2 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{int(num_bytes)} B"


def describe(event: PullProgress, overall: bool = True) -> str:
    """One line of figures: '120.3 MB / 600.0 MB, 12.1 MB/s' (the pull's, or the item's)."""
    done, total, rate = ((event.overall_done, event.overall_total, event.overall_rate) if overall
                         else (event.done, event.total, event.rate))
    if event.unit != "B":
        return f"{event.unit} {done}/{total}" if total else f"{event.unit} {done}"
    text = format_bytes(done) + (f" / {format_bytes(total)}" if total else "")
    return text + (f", {format_bytes(rate)}/s" if rate > 0 else "")
