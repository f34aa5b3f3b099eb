"""Progress events of a pull, and files downloaded several at a time (against fake_hub.py)."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from localllm.hub import download as download_module
from localllm.hub import remote
from localllm.hub.download import run_bounded
from localllm.hub.errors import DownloadError
from localllm.hub.progress import DownloadCancelled, DownloadTracker, MeteredFile, PullProgress, describe
from localllm.hub.pull import pull
from localllm.hub.store import default_store
from tests.hub.conftest import CHUNK, safetensors_repo_files
from tests.hub.fake_hub import Fault

SHARD = "model-00001-of-00002.safetensors"
quiet = lambda message: None  # noqa: E731


def _by_file(events: list[PullProgress]) -> dict[str, list[PullProgress]]:
    files: dict[str, list[PullProgress]] = {}
    for e in events:
        files.setdefault(e.item, []).append(e)
    return files


# ---------------------------------------------------------------- events


def test_every_file_reports_its_bytes_and_the_whole_pull_adds_up(hub):
    files = safetensors_repo_files(shard_bytes=1_200_000)
    hub.add_repo("org/tiny", files)
    events: list[PullProgress] = []
    result = pull("org/tiny", log=quiet, progress=events.append)
    taken = {f.path: f.size for f in result.entry.manifest.files}
    total = sum(taken.values())
    assert {e.stage for e in events} == {"download"} and {e.unit for e in events} == {"B"}
    by_file = _by_file(events)
    assert set(by_file) == set(taken)
    for path, seen in by_file.items():
        assert seen[0].done == 0 and not seen[0].finished  # the start, before any byte
        assert seen[-1].finished and seen[-1].done == seen[-1].total == taken[path]
        assert [e.done for e in seen] == sorted(e.done for e in seen)
        assert sum(e.finished for e in seen) == 1
    overall = [e.overall_done for e in events]
    assert overall == sorted(overall) and overall[-1] == total
    assert all(e.overall_total == total for e in events)
    assert events[-1].overall_rate > 0


def test_a_resumed_pull_starts_from_the_bytes_it_already_has(hub):
    files = safetensors_repo_files()
    hub.add_repo("org/tiny", files)
    hub.faults[SHARD] = Fault(cut_after=3 * CHUNK, then_statuses=[503])
    with pytest.raises(DownloadError):
        pull("org/tiny", log=quiet)
    events: list[PullProgress] = []
    pull("org/tiny", log=quiet, progress=events.append)
    by_file = _by_file(events)
    assert by_file[SHARD][0].done == 3 * CHUNK  # the part on disk counts as done
    finished_before = [p for p, seen in by_file.items() if len(seen) == 1]
    assert sorted(finished_before) == sorted(p for p in by_file if p != SHARD)  # one event: already there
    assert events[-1].overall_done == events[-1].overall_total


def test_the_tracker_throttles_byte_events_and_measures_the_rate():
    now = [0.0]
    events: list[PullProgress] = []
    tracker = DownloadTracker({"a.bin": 1000, "b.bin": 3000}, events.append, clock=lambda: now[0])
    a, b = tracker.meter("a.bin"), tracker.meter("b.bin")
    b.start(1000)  # resumed: 1000 bytes already there, not counted into the rate
    a.start(0)
    for _ in range(4):
        now[0] += 1 / 32
        a.add(100)  # 4 chunks over 0.125 s: reported once, at the end
    a_events = [e for e in events if e.item == "a.bin"]
    assert [e.done for e in a_events] == [0, 400]
    assert a_events[-1].rate == pytest.approx(400 / 0.125)
    now[0] += 1.0
    b.add(2000)
    assert events[-1].item == "b.bin" and events[-1].done == 3000 and events[-1].rate == pytest.approx(2000 / 1.125)
    a.finish(1000)
    assert events[-1].finished and events[-1].overall_done == 4000 and events[-1].overall_total == 4000
    assert events[-1].overall_rate == pytest.approx(2400 / 1.125)  # the 1000 resumed bytes are not in it
    assert describe(events[-1]) == "4.0 KB / 4.0 KB, 2.1 KB/s"
    assert describe(events[-1], overall=False).startswith("1.0 KB / 1.0 KB")


def test_an_unknown_size_leaves_the_total_unknown():
    events: list[PullProgress] = []
    tracker = DownloadTracker({"a.bin": None, "b.bin": 10}, events.append)
    tracker.meter("a.bin").finish(7)
    assert events[-1].overall_total is None and events[-1].total is None
    assert describe(events[-1]) == "7 B"


# ---------------------------------------------------------------- several files at once


def test_files_download_several_at_a_time_but_no_more_than_the_bound(hub, monkeypatch):
    files = safetensors_repo_files()
    hub.add_repo("org/tiny", files)
    for path in files:
        hub.faults[path] = Fault(delay=0.3)
    started = time.monotonic()
    result = pull("org/tiny", log=quiet)
    elapsed = time.monotonic() - started
    num_files = len(result.entry.manifest.files)
    assert num_files == 7 and hub.peak_transfers == download_module.DOWNLOAD_WORKERS == 4
    assert elapsed < num_files * 0.3  # one after another would take at least that long
    for f in result.entry.manifest.files:
        assert (result.entry.directory / f.path).read_bytes() == files[f.path]

    hub.peak_transfers = 0
    monkeypatch.setattr(download_module, "DOWNLOAD_WORKERS", 1)
    hub.add_repo("org/other", files)
    pull("org/other", log=quiet)
    assert hub.peak_transfers == 1


def test_a_failed_file_stops_the_files_not_yet_started():
    started: list[int] = []
    ended: list[int] = []
    one_started = threading.Event()

    def job(item: int, cancel: threading.Event) -> None:
        started.append(item)
        if item == 0:
            one_started.wait(5)
            raise DownloadError("file 0 failed")
        one_started.set()
        time.sleep(0.2)
        ended.append(item)

    with pytest.raises(DownloadError, match="file 0 failed"):
        run_bounded(job, range(10), 2)
    assert sorted(started) == [0, 1] and ended == [1]  # 1 was under way and finished; 2..9 never started


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt, even when the suite runs as a background job (where the
    shell hands it SIGINT ignored); the previous handler comes back after the test."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_an_interrupt_cancels_the_transfers_under_way(ctrl_c_raises):
    cancelled: list[bool] = []

    def job(item: int, cancel: threading.Event) -> None:
        if item == 0:
            time.sleep(0.1)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # Ctrl+C while the caller waits
        cancelled.append(cancel.wait(5))

    with pytest.raises(KeyboardInterrupt):
        run_bounded(job, range(2), 2)
    assert cancelled == [True, True]


def test_a_cancelled_transfer_keeps_its_bytes_for_the_next_pull(hub):
    files = safetensors_repo_files()
    repo = hub.add_repo("org/tiny", files)
    listing = remote.list_repo("org/tiny")
    shard = next(f for f in listing.files if f.path == SHARD)
    cancel = threading.Event()

    class StopAfterTheFirstBytes:  # a FileMeter that presses Ctrl+C once bytes arrive
        def start(self, on_disk: int) -> None:
            pass

        def add(self, num_bytes: int) -> None:
            cancel.set()

    parts = default_store().partial_dir("org/tiny", "") / ".parts"
    dest = parts.parent / SHARD
    with pytest.raises(DownloadCancelled):
        remote.download_file("org/tiny", repo.sha, shard, dest, parts, None, StopAfterTheFirstBytes(), cancel)
    kept = (parts / remote.part_name(shard)).stat().st_size
    assert 0 < kept < shard.size and not dest.exists()
    assert remote.download_file("org/tiny", repo.sha, shard, dest, parts)
    assert dest.read_bytes() == files[SHARD]
    assert hub.gets(SHARD)[-1].range == f"bytes={kept}-"


def test_a_metered_file_counts_writes_and_a_restart_from_zero(tmp_path):
    """http_get truncates the part when a server answers a Range with the whole file (200)."""
    events: list[PullProgress] = []
    tracker = DownloadTracker({"a.bin": 10}, events.append)
    meter = tracker.meter("a.bin")
    with open(tmp_path / "a.part", "ab") as raw:
        raw.write(b"12345")
        meter.start(5)
        out = MeteredFile(raw, meter, threading.Event())
        out.write(b"678")
        assert tracker.done["a.bin"] == 8 and tracker.fetched == 3
        out.seek(0)
        out.truncate()
        assert tracker.done["a.bin"] == 0 and events[-1].done == 0
        out.write(b"0123456789")
    assert (tmp_path / "a.part").read_bytes() == b"0123456789" and tracker.done["a.bin"] == 10
