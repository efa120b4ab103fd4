"""A run of one day, from taking the day's lease to recording its outcome; for every runner.

The local runner (`pipeline.py`) and the Ray runner (`ray_runner.py`) both export a day as one
run: a RUNNING record saved when its lease is taken, the stale records of runs that died on the
same day closed, the lease renewed while the run lives, and at the end one outcome by one rule,
saved and the lease let go. That lifecycle is `DayRun`; what the runners report as they go is
`BatchDone` after each commit and `DayDone` at each day's end.

    run = DayRun.planned(settings, progress, day, trigger="manual")
    await run.begin()  # the day's lease and a RUNNING record; or locked out, finished
    if not run.record.finished:
        ...  # export the window
        run.finish()
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import structlog

from smartgo_exporter.config import ExportConfig, Settings
from smartgo_exporter.costs import CostBasis, estimate
from smartgo_exporter.errors import ExporterError
from smartgo_exporter.progress import NonFatalProgressStore
from smartgo_exporter.run_records import RunCounts, RunError, RunRecord, RunStatus
from smartgo_exporter.windows import Window, business_day

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class BatchDone:
    """Reported after each committed batch, for progress displays."""

    day: date
    counts: RunCounts
    days_done: int
    """Days finished before this one, of the `days_total` this export call runs."""
    days_total: int


ProgressCallback = Callable[[BatchDone], None]


@dataclasses.dataclass(frozen=True, slots=True)
class DayDone:
    """Reported when a day's run is recorded with its outcome, for progress displays: a day
    can end with no batch to report (no sales, a failure), and on Ray days end in any order."""

    record: RunRecord
    days_done: int
    """Days finished, this one included, of the `days_total` this export call runs."""
    days_total: int


DayCallback = Callable[[DayDone], None]


@dataclasses.dataclass
class DayRun:
    """One run of one day: its record, and its exclusive hold on the day while it works."""

    record: RunRecord
    lease: DayLease
    progress: NonFatalProgressStore
    log: structlog.typing.FilteringBoundLogger
    export: ExportConfig
    cost_basis: CostBasis
    log_fields: dict[str, str] = dataclasses.field(default_factory=dict)
    keep_alive: asyncio.Task[None] | None = None

    @classmethod
    def planned(
        cls,
        settings: Settings,
        progress: NonFatalProgressStore,
        day: date,
        trigger: str,
        **log_fields: str,
    ) -> DayRun:
        """The run with its record made, but nothing taken or saved until `begin`: so that a
        runner may read the day ahead (the local runner does, while the day before is still
        embedded) and drop it unrecorded if the day before fails, as if it had not started."""
        export = settings.export
        record = new_run_record(settings, business_day(day, export.timezone), trigger)
        return cls(
            record,
            DayLease(progress, lease_name(settings, day), record.run_id),
            progress,
            log.bind(run_id=record.run_id, day=day.isoformat()),
            export,
            CostBasis.of(settings),
            log_fields,
        )

    async def begin(self) -> None:
        """Take the day's lease and save the run as RUNNING; or, when another run holds the
        day past `lock_wait_seconds`, save it FAILED as locked out (`record.finished` then)."""
        record, export = self.record, self.export
        if not await self.lease.acquire(export.lease_seconds, export.lock_wait_seconds):
            _lock_out(record, export.lease_seconds)
            record.cost = estimate(record, self.cost_basis)
            self.log.error("run_locked_out")
            self.progress.save(record)
            return
        started = record.window_start.isoformat()
        self.log.info(
            "run_started", window_start=started, trigger=record.trigger, **self.log_fields
        )
        self.progress.save(record)
        close_interrupted_runs(self.progress, record)
        self.keep_alive = asyncio.create_task(self.lease.keep_alive(export.lease_seconds))

    def fail(self, error: BaseException) -> RunRecord:
        """Finish the run as FAILED by `error`, with its traceback logged if it is a bug."""
        if not isinstance(error, ExporterError):
            self.log.error("stage_failed", error=str(error), exc_info=error)
        return self.finish(run_failure(error))

    def finish(self, failure: RunError | None = None) -> RunRecord:
        """Record the outcome, save it and let go of the day.

        FAILED with `failure`'s detail; else SUCCEEDED when no row was rejected and nothing
        stopped the run early (which leaves a `message`), PARTIAL otherwise. Errors that lost
        no sale (a photo that failed, a currency normalised) leave a run SUCCEEDED.
        """
        record = self.record
        if failure is not None:
            record.status = RunStatus.FAILED
            record.message = failure.detail
            record.record_error(failure)
            self.log.error("run_failed", error=record.message)
        else:
            complete = record.counts.rejected == 0 and not record.message
            record.status = RunStatus.SUCCEEDED if complete else RunStatus.PARTIAL
        record.finished_at = datetime.now(UTC)
        record.cost = estimate(record, self.cost_basis)
        self.progress.save(record)
        if self.keep_alive is not None:
            self.keep_alive.cancel()
        self.lease.release()
        counts = dataclasses.asdict(record.counts)
        cost = str(record.cost.total)
        self.log.info("run_finished", status=str(record.status), cost_usd=cost, **counts)
        return record


def run_failure(error: BaseException) -> RunError:
    """A run-wide failure as every runner records it: the exception's type and message."""
    return RunError("", "run", type(error).__name__, str(error) or type(error).__name__)


def close_interrupted_runs(progress: NonFatalProgressStore, current: RunRecord) -> None:
    """Record as FAILED the runs of this day still marked RUNNING: they were interrupted.

    A run killed, crashed or timed out (SIGKILL, out of memory, a Lambda timeout) cannot
    write its own outcome, so its record would claim RUNNING forever. Once this run holds the
    day's lease, no other run of the day is alive (a holder renews its lease while it lives),
    so those records are stale; this run redoes their work, and their records now say so.
    A batch backfill's record (`batch_job`) is not one: it holds no lease, it waits for its
    Bedrock job, and its days are exported while it is still RUNNING.
    """
    for stale in progress.runs_on(current.business_date):
        if stale.status is not RunStatus.RUNNING or stale.run_id == current.run_id:
            continue
        if stale.batch_job is not None:
            continue
        stale.status = RunStatus.FAILED
        stale.finished_at = datetime.now(UTC)
        stale.message = (
            "interrupted: the run stopped without recording an outcome (killed, crashed or"
            f" timed out); run {current.run_id} exports the day again"
        )
        stale.record_error(RunError("", "run", "interrupted", stale.message))
        log.warning("interrupted_run_closed", interrupted_run_id=stale.run_id)
        progress.save(stale)


def lease_name(settings: Settings, day: date) -> str:
    """The name of a day's lease: every runner takes the same one, so they exclude each other."""
    return f"window:{settings.export.source_name}:{day}"


def _lock_out(record: RunRecord, ttl_seconds: float) -> None:
    record.status = RunStatus.FAILED
    record.message = (
        f"another run is exporting {record.business_date}, so this run did nothing"
        f" (a crashed run's hold lapses within {ttl_seconds:g} s)"
    )
    record.record_error(RunError("", "run", "locked", record.message))
    record.finished_at = datetime.now(UTC)


@dataclasses.dataclass
class DayLease:
    """A run's exclusive hold on its day, so two runs of one window never work at once."""

    progress: NonFatalProgressStore
    name: str
    owner: str

    async def acquire(self, ttl_seconds: float, wait_seconds: float) -> bool:
        deadline = time.monotonic() + wait_seconds
        while not self.progress.acquire_lease(self.name, self.owner, ttl_seconds):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(min(2.0, max(deadline - time.monotonic(), 0.05)))
        return True

    async def keep_alive(self, ttl_seconds: float) -> None:
        """Renew the hold while the run lives; the event loop never blocks, so this is on time."""
        while True:
            await asyncio.sleep(ttl_seconds / 3)
            renewed = await asyncio.to_thread(
                self.progress.renew_lease, self.name, self.owner, ttl_seconds
            )
            if not renewed:
                # Our hold lapsed and another run took the day: both upsert the same keys, so
                # the table stays right; say so, since the work is now done twice.
                log.warning("lease_lost", lease=self.name)

    def release(self) -> None:
        self.progress.release_lease(self.name, self.owner)


def new_run_record(settings: Settings, window: Window, trigger: str) -> RunRecord:
    """A RUNNING record under a new run id, which starts with the day so ids sort by day."""
    now = datetime.now(UTC)
    return RunRecord(
        run_id=f"{window.day:%Y%m%d}-{uuid.uuid4().hex[:12]}",
        business_date=window.day,
        window_start=window.start,
        window_end=window.end,
        trigger=trigger,
        status=RunStatus.RUNNING,
        started_at=now,
        expires_at=now + timedelta(days=settings.retention_days),
    )


def failed_run_record(
    settings: Settings, day: date, trigger: str, error: ExporterError
) -> RunRecord:
    """The record of a run that failed before its day began: a stage could not be opened."""
    record = new_run_record(settings, business_day(day, settings.export.timezone), trigger)
    record.status = RunStatus.FAILED
    record.finished_at = record.started_at
    record.message = str(error)
    record.record_error(run_failure(error))
    record.cost = estimate(record, CostBasis.of(settings))
    log.error("run_failed", day=day.isoformat(), error=str(error))
    return record
