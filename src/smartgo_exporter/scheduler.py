"""The local schedule: the nightly export on a machine of one's own, with no cloud scheduler.

`smartgo-exporter schedule` behaves as the Lambda on its EventBridge rule does, so the two can
stand in for each other: it exports as soon as it starts (yesterday, plus the days missed since
the last success, so a machine that was off at 03:00 loses nothing), then again at every time
the cron expression names, in UTC. A signal stops it cleanly: during an export the batch in
hand is committed and the run recorded PARTIAL (the next run completes it); between exports it
exits at once.

    stop = threading.Event()
    with stop_on_signals(stop):
        run_schedule(load_config("smartgo-exporter.toml"), stop_event=stop)

The clock and the wait are parameters, so tests drive days of schedule in milliseconds.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from types import FrameType
from typing import Protocol

import structlog
from croniter import croniter

from smartgo_exporter.config import Settings
from smartgo_exporter.pipeline import StopCheck, export
from smartgo_exporter.run_records import RunRecord

log = structlog.get_logger(__name__)

TRIGGER = "schedule"
LONGEST_WAIT_SECONDS = 60.0
"""A wait is cut into pieces this long and the clock read again after each: a machine that was
suspended, or whose clock was stepped, then fires on time instead of a whole wait late."""

Clock = Callable[[], datetime]
Wait = Callable[[float], object]
"""Block for up to this many seconds, returning early when a stop is requested."""


class Exporter(Protocol):
    """What the schedule calls to export; `pipeline.export` in production."""

    def __call__(
        self,
        settings: Settings,
        days: Sequence[date] | None = None,
        *,
        trigger: str = ...,
        should_stop: StopCheck | None = None,
    ) -> list[RunRecord]: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


def next_fire(cron: str, after: datetime) -> datetime:
    """The first time strictly after `after` (an aware datetime) at which `cron` fires, in UTC."""
    fire: datetime = croniter(cron, after.astimezone(UTC)).get_next(datetime)
    return fire.astimezone(UTC)


def fire_times(cron: str, after: datetime) -> Iterator[datetime]:
    """Every time `cron` fires after `after`, in order, without end."""
    moment = after
    while True:
        moment = next_fire(cron, moment)
        yield moment


def run_schedule(
    settings: Settings,
    *,
    cron: str | None = None,
    stop_event: threading.Event | None = None,
    clock: Clock = utc_now,
    wait: Wait | None = None,
    exporter: Exporter = export,
) -> None:
    """Export now, then at every time `cron` fires, until `stop_event` is set; then return.

    `cron` defaults to `settings.schedule.cron`. Each export is `exporter(settings, None, ...)`:
    yesterday with catch-up, then the lookback days read again (`day_plan`), so a fire that was
    missed (the machine was off, an export ran past the next fire time) is made up by the next
    one instead of being queued. An export that raises is logged and the schedule goes on:
    tomorrow's run may well work, and catch-up will include today's day. `wait` defaults to
    `stop_event.wait`.
    """
    cron = cron or settings.schedule.cron
    stop = stop_event or threading.Event()
    sleep = wait or stop.wait
    log.info("schedule_started", cron=cron, next_run=next_fire(cron, clock()).isoformat())
    _export_once(settings, exporter, stop)
    while not stop.is_set():
        fire_at = next_fire(cron, clock())
        log.info("schedule_waiting", next_run=fire_at.isoformat())
        while not stop.is_set() and (left := (fire_at - clock()).total_seconds()) > 0:
            sleep(min(left, LONGEST_WAIT_SECONDS))
        if not stop.is_set():
            _export_once(settings, exporter, stop)
    log.info("schedule_stopped")


def _export_once(settings: Settings, exporter: Exporter, stop: threading.Event) -> None:
    try:
        records = exporter(settings, None, trigger=TRIGGER, should_stop=stop.is_set)
    except Exception:
        log.exception("scheduled_export_crashed")
        return
    for record in records:
        log.info(
            "scheduled_run_finished",
            day=record.business_date.isoformat(),
            status=str(record.status),
            run_id=record.run_id,
        )


@contextlib.contextmanager
def stop_on_signals(
    stop: threading.Event,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> Iterator[threading.Event]:
    """Within the block, the first of `signals` sets `stop`; the same signal again acts as usual.

    So `docker stop`, systemd or Ctrl-C end the schedule cleanly, while an impatient second
    Ctrl-C still interrupts at once. Must be entered on the main thread (Python delivers
    signals there). The handler only starts a helper thread, which logs and sets the event:
    both take locks (the log stream's, the event's) that the interrupted main thread may be
    holding at that very moment, and taking them in the handler would deadlock.
    """
    previous = {number: signal.getsignal(number) for number in signals}

    def announce_and_stop(name: str) -> None:
        log.warning("stop_requested", signal=name)
        stop.set()

    def request_stop(number: int, _frame: FrameType | None) -> None:
        signal.signal(number, previous[signal.Signals(number)])
        name = signal.Signals(number).name
        threading.Thread(
            target=announce_and_stop, args=(name,), name="stop-on-signal", daemon=True
        ).start()

    for number in signals:
        signal.signal(number, request_stop)
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
