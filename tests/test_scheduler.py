"""The local schedule: when it fires, that it catches up at start, and that a signal stops it
cleanly, both in the middle of an export and between exports (a real process, a real signal).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest

from smartgo_exporter.config import ScheduleConfig, Settings
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.demo import DemoCatalog, DemoPaths, write_demo_config
from smartgo_exporter.errors import ConfigError
from smartgo_exporter.pipeline import StopCheck
from smartgo_exporter.progress.sqlite import SqliteProgressStore
from smartgo_exporter.run_records import RunRecord, RunStatus
from smartgo_exporter.scheduler import (
    LONGEST_WAIT_SECONDS,
    fire_times,
    next_fire,
    run_schedule,
    stop_on_signals,
)
from smartgo_exporter.windows import yesterday
from tests.demo_store import copy_of_store, serve_demo_store

DEFAULT_CRON = ScheduleConfig().cron


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# --- when it fires ------------------------------------------------------------------------------


def test_the_default_schedule_is_three_in_the_morning_utc() -> None:
    assert DEFAULT_CRON == "0 3 * * *"
    assert next_fire(DEFAULT_CRON, at("2026-10-06T02:59:59+00:00")) == at("2026-10-06T03:00Z")
    assert next_fire(DEFAULT_CRON, at("2026-10-06T03:00:00+00:00")) == at("2026-10-07T03:00Z")
    # An aware time in another zone is the same instant: 04:30 in Berlin is 02:30 UTC.
    assert next_fire(DEFAULT_CRON, at("2026-10-06T04:30:00+02:00")) == at("2026-10-06T03:00Z")


def test_fire_times_are_one_a_day_across_a_month_and_a_year_end() -> None:
    times = fire_times(DEFAULT_CRON, at("2026-12-30T12:00:00+00:00"))
    assert [next(times) for _ in range(3)] == [
        at("2026-12-31T03:00Z"),
        at("2027-01-01T03:00Z"),
        at("2027-01-02T03:00Z"),
    ]


@pytest.mark.parametrize("cron", ["cron(0 3 * * ? *)", "0 3 * * * 0", "0 25 * * *", "daily"])
def test_a_cron_that_is_not_five_valid_fields_is_refused_naming_the_setting(
    tmp_path: Path, cron: str
) -> None:
    write_demo_config(DemoPaths(tmp_path))
    with pytest.raises(ConfigError) as refused:
        load_config(DemoPaths(tmp_path).config, schedule={"cron": cron})
    assert refused.value.key == "schedule.cron"


# --- the loop, on a clock of the test's own -------------------------------------------------------


class FakeTime:
    """A clock that moves only when the schedule waits: days pass in milliseconds."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.longest_wait = 0.0

    def clock(self) -> datetime:
        return self.now

    def wait(self, seconds: float) -> None:
        self.longest_wait = max(self.longest_wait, seconds)
        self.now += timedelta(seconds=seconds)


class RecordingExporter:
    """Stands in for `export`: notes when and how it was called; stops the schedule after
    `calls` calls, as a signal would; raises on the calls listed in `crash_on`."""

    def __init__(
        self, time_source: FakeTime, stop: threading.Event, calls: int, crash_on: Sequence[int] = ()
    ) -> None:
        self.time = time_source
        self.stop = stop
        self.calls = calls
        self.crash_on = crash_on
        self.seen: list[tuple[datetime, Sequence[date] | None, str]] = []

    def __call__(
        self,
        settings: Settings,
        days: Sequence[date] | None = None,
        *,
        trigger: str = "manual",
        should_stop: StopCheck | None = None,
    ) -> list[RunRecord]:
        self.seen.append((self.time.now, days, trigger))
        if len(self.seen) >= self.calls:
            self.stop.set()
        if len(self.seen) in self.crash_on:
            raise RuntimeError("the database went away")
        return []


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    paths = DemoPaths(tmp_path)
    write_demo_config(paths)
    return load_config(paths.config)


def test_on_start_it_exports_at_once_catching_up(settings: Settings) -> None:
    fake, stop = FakeTime(at("2026-10-06T01:00Z")), threading.Event()
    exporter = RecordingExporter(fake, stop, calls=1)
    run_schedule(settings, stop_event=stop, clock=fake.clock, wait=fake.wait, exporter=exporter)
    assert exporter.seen == [(at("2026-10-06T01:00Z"), None, "schedule")]


def test_after_the_catch_up_it_exports_at_every_fire_time(settings: Settings) -> None:
    fake, stop = FakeTime(at("2026-10-06T01:00Z")), threading.Event()
    exporter = RecordingExporter(fake, stop, calls=3)
    run_schedule(settings, stop_event=stop, clock=fake.clock, wait=fake.wait, exporter=exporter)
    assert [moment for moment, _, _ in exporter.seen] == [
        at("2026-10-06T01:00Z"),
        at("2026-10-06T03:00Z"),
        at("2026-10-07T03:00Z"),
    ]
    assert {(days, trigger) for _, days, trigger in exporter.seen} == {(None, "schedule")}
    assert fake.longest_wait <= LONGEST_WAIT_SECONDS


def test_the_cron_can_be_given_instead_of_the_configured_one(settings: Settings) -> None:
    fake, stop = FakeTime(at("2026-10-06T01:00Z")), threading.Event()
    exporter = RecordingExporter(fake, stop, calls=3)
    run_schedule(
        settings,
        cron="30 */6 * * *",
        stop_event=stop,
        clock=fake.clock,
        wait=fake.wait,
        exporter=exporter,
    )
    assert [moment for moment, _, _ in exporter.seen][1:] == [
        at("2026-10-06T06:30Z"),
        at("2026-10-06T12:30Z"),
    ]


def test_an_export_that_crashes_does_not_end_the_schedule(settings: Settings) -> None:
    fake, stop = FakeTime(at("2026-10-06T01:00Z")), threading.Event()
    exporter = RecordingExporter(fake, stop, calls=2, crash_on=[1])
    run_schedule(settings, stop_event=stop, clock=fake.clock, wait=fake.wait, exporter=exporter)
    assert [moment for moment, _, _ in exporter.seen] == [
        at("2026-10-06T01:00Z"),
        at("2026-10-06T03:00Z"),
    ]


# --- a real process and a real signal -------------------------------------------------------------


@pytest.fixture(scope="module")
def recent_store(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[DemoPaths, DemoCatalog]]:
    """A demo store whose sales include yesterday's, wherever the clock stands: the schedule
    exports yesterday by the real clock."""
    folder = tmp_path_factory.mktemp("recent-store")
    first_day = yesterday("UTC") - timedelta(days=1)
    with serve_demo_store(folder, first_day=first_day, days=3, sales=120) as served:
        yield served


@pytest.fixture
def recent_workspace(recent_store: tuple[DemoPaths, DemoCatalog], tmp_path: Path) -> DemoPaths:
    return copy_of_store(recent_store[0], tmp_path)


class Scheduler:
    """`smartgo-exporter schedule` in a child process, its JSON log lines read as they come."""

    def __init__(self, config: Path, **environment: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from smartgo_exporter.cli import app; app()",
                "schedule",
                "--config",
                str(config),
                "--log-level",
                "INFO",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **environment},
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        assert self.process.stderr is not None
        threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                self.lines.put(json.loads(line))
            except json.JSONDecodeError:
                self.lines.put({"event": "unparsed", "text": line})

    def wait_for(self, event: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the scheduler exited before {event}"
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line.get("event") == event:
                return line
        raise AssertionError(f"no {event} within {timeout} s")

    def stop(self, timeout: float) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_sigterm_during_an_export_commits_the_batch_records_partial_and_exits(
    recent_workspace: DemoPaths, recent_store: tuple[DemoPaths, DemoCatalog]
) -> None:
    launched = datetime.now(UTC)
    scheduler = Scheduler(
        recent_workspace.config, SGX_EXPORT__BATCH_SIZE="2", SGX_EXPORT__COMMIT_ROWS="2"
    )
    try:
        committed = scheduler.wait_for("batch_committed")
        assert scheduler.stop(timeout=60) == 0
    finally:
        scheduler.kill()
    day = date.fromisoformat(committed["day"])
    runs = SqliteProgressStore(recent_workspace.progress_db).runs_on(day)
    assert [(run.status, run.trigger) for run in runs] == [(RunStatus.PARTIAL, "schedule")]
    # Yesterday by the child's clock when it planned its days: after the launch, before its run
    # began. One day, or two when a midnight fell in between; never a day the test cannot name.
    assert day in {yesterday("UTC", launched), yesterday("UTC", runs[0].started_at)}
    assert "stopped" in runs[0].message
    on_the_day = sum(s.defect is None and s.sold_at.date() == day for s in recent_store[1].sales)
    assert 0 < runs[0].counts.written < on_the_day


def test_sigterm_between_exports_exits_at_once(settings: Settings) -> None:
    """In this process, with a real signal: the schedule is waiting for 03:00 UTC on a clock that
    stands hours before it, so only the stop can end the wait; a wait that runs out instead
    would find the fire time no nearer, and is reported as a failure.

    The signal is sent by the main thread as its wait begins. Sent from another thread, it could
    land in the instant before the main thread blocks, where CPython leaves it unhandled until
    the wait ends: a race of the test's making, which a supervisor's signal to the scheduler's
    process does not have while the process sleeps.
    """
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGTERM)
    exports: list[Sequence[date] | None] = []
    waits: list[tuple[float, bool]] = []

    def exporter(
        settings: Settings, days: Sequence[date] | None = None, **_: object
    ) -> list[RunRecord]:
        exports.append(days)
        return []

    def wait(seconds: float) -> None:
        if not waits:
            os.kill(os.getpid(), signal.SIGTERM)
        woken = stop.wait(seconds)
        waits.append((seconds, woken))
        stop.set()  # a wait that ran out ends the schedule too, and the test then fails

    with stop_on_signals(stop):
        run_schedule(
            settings,
            cron="0 3 1 1 *",
            stop_event=stop,
            clock=lambda: at("2026-10-06T12:00Z"),
            wait=wait,
            exporter=exporter,
        )
    assert exports == [None]  # the export at start, and none at a fire time
    assert waits == [(LONGEST_WAIT_SECONDS, True)]  # the first wait, woken by the stop
    assert signal.getsignal(signal.SIGTERM) is previous
