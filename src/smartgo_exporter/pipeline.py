"""The export: source -> photos -> embeddings -> table, with a run record beside it.

This is the one place that wires the stages; the CLI, the scheduler and the Lambda handler all
call `export`. Within a window, work flows one way through two concurrent halves joined by a
bounded queue: the first reads a batch of sales, looks up what the table already holds and
fetches the photos still needed; the second embeds those photos and, every `commit_rows` rows
and at the end of the window, commits what it gathered as one snapshot. So the next batch's
photos download while this batch's are embedded, and at most two batches' photos are in memory
however large the day. What a batch goes through is in `batches.py`, shared with the Ray runner.

Blocking work runs on dedicated single-thread executors (one for the source, one for the table,
one for the model): database drivers and SQLite connections expect to stay on one thread, and
the event loop stays free to drive the photo downloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import pyarrow as pa
import structlog

from smartgo_exporter.batches import (
    embed_photos,
    last_per_key,
    select_sales,
    sold_within,
    sort_photos,
)
from smartgo_exporter.config import Settings
from smartgo_exporter.embedders import Embedder, load_embedder
from smartgo_exporter.errors import ExporterError
from smartgo_exporter.index import sync_after_export
from smartgo_exporter.photo_fetcher import Photo, PhotoFetcher
from smartgo_exporter.progress import NonFatalProgressStore, load_progress_store
from smartgo_exporter.reuse import RecentEmbeddings, changed_rows, plan_batch
from smartgo_exporter.run_records import RunCounts, RunError, RunRecord, RunStatus
from smartgo_exporter.sales import Sale
from smartgo_exporter.schema import EmbeddingStatus, SaleRow, StoredRows, rows_to_arrow
from smartgo_exporter.sinks.iceberg import SalesTable
from smartgo_exporter.sources import SaleBatch, Source, load_source
from smartgo_exporter.windows import Window, business_day, catch_up, ensure_over, yesterday

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class BatchDone:
    """Reported after each committed batch, for progress displays."""

    day: date
    counts: RunCounts
    days_done: int
    """Days finished before this one, of the `days_total` this export call runs."""
    days_total: int


ProgressCallback = Callable[[BatchDone], None]
StopCheck = Callable[[], bool]
"""Asked before each new batch; True stops the run there (a time budget, a SIGTERM)."""


def plan_days(
    settings: Settings,
    last_succeeded: date | None,
    now: datetime | None = None,
    *,
    last_in_table: date | None = None,
) -> list[date]:
    """Yesterday, plus every day missed since `last_succeeded` (at most `catch_up_days`).

    When the progress store knows of no successful run (it was unreachable, or its records
    expired or were lost), `last_in_table`, the latest business day the table's snapshots
    name, stands in: the days after it are caught up, and that day itself is exported again,
    since the table cannot tell whether its run completed.
    """
    target = yesterday(settings.export.timezone, now)
    if last_succeeded is None and last_in_table is not None:
        last_succeeded = last_in_table - timedelta(days=1)
    return catch_up(last_succeeded, target, settings.export.catch_up_days)


def days_due(settings: Settings, now: datetime | None = None) -> list[date]:
    """The days `export(settings)` would export at `now`: yesterday plus the missed days.

    For callers that must know them first (the Lambda anchors them to its event's time and
    reports which ones its time budget left out).
    """
    progress = NonFatalProgressStore.connect(
        lambda: load_progress_store(settings.progress, retention_days=settings.retention_days)
    )

    def last_in_table() -> date | None:
        try:
            table = SalesTable.open(
                settings.table, source=settings.export.source_name, create=False
            )
        except ExporterError:
            return None
        return table.last_exported_day()

    try:
        return _days_due(settings, progress, last_in_table, now)
    finally:
        progress.close()


def _days_due(
    settings: Settings,
    progress: NonFatalProgressStore,
    last_in_table: Callable[[], date | None],
    now: datetime | None = None,
) -> list[date]:
    last_succeeded = progress.last_succeeded_day()
    in_table = last_in_table() if last_succeeded is None else None
    return plan_days(settings, last_succeeded, now, last_in_table=in_table)


def export(
    settings: Settings,
    days: Sequence[date] | None = None,
    *,
    trigger: str = "manual",
    on_batch: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> list[RunRecord]:
    """Export each day, one run (and one run record) per day, and return the records.

    With no `days`, exports yesterday in the business time zone and catches up on the days
    missed since the last successful run (or, when the progress store knows of none, since the
    last day the table's snapshots name; see `plan_days`). A run-wide failure (source
    unreachable, model or table unavailable) is recorded as FAILED and ends the export there:
    later days would fail alike, and as the last successful day has not moved, the next run
    catches them up. The caller decides from the statuses what to exit with.

    When `should_stop` answers True, the batches already read are committed, the run is
    recorded PARTIAL and no further day is started. A day of `days` that has not ended yet
    raises DayNotOver before anything is read or recorded.
    """
    ensure_over(days or (), settings.export.timezone)
    progress = NonFatalProgressStore.connect(
        lambda: load_progress_store(settings.progress, retention_days=settings.retention_days)
    )
    try:
        records: list[RunRecord] = []
        with _Stages.open(settings, on_batch, should_stop or (lambda: False)) as stages:
            if days is None:
                days = _days_due(settings, progress, stages.table.last_exported_day)
            for number, day in enumerate(days):
                if records and stages.should_stop():
                    break
                stages.position = (number, len(days))
                records.append(asyncio.run(_export_day(stages, progress, day, trigger)))
                if records[-1].status is RunStatus.FAILED:
                    break
            sync_after_export(
                settings.index,
                settings.table,
                stages.table.table,
                stages.embedder.model_id,
                stages.embedder.dim,
            )
        return records
    except ExporterError as error:
        # A stage that could not even be opened (the model, the table) fails the first day.
        record = failed_run_record(
            settings, days[0] if days else yesterday(settings.export.timezone), trigger, error
        )
        progress.save(record)
        return [record]
    finally:
        progress.close()


@dataclasses.dataclass
class _Stages:
    settings: Settings
    source: Source
    embedder: Embedder
    table: SalesTable
    on_batch: ProgressCallback | None
    should_stop: StopCheck
    source_thread: ThreadPoolExecutor
    table_thread: ThreadPoolExecutor
    model_thread: ThreadPoolExecutor
    recent: RecentEmbeddings
    position: tuple[int, int] = (0, 1)
    """(days done, days in this export call), for BatchDone."""

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, settings: Settings, on_batch: ProgressCallback | None, should_stop: StopCheck
    ) -> Iterator[_Stages]:
        # The model and the table are opened first: they fail fast on a bad install or catalog,
        # before the source is touched.
        embedder = load_embedder(settings.embedder)
        table = SalesTable.open(settings.table, source=settings.export.source_name)
        source = load_source(settings.source)
        source_thread, table_thread, model_thread = threads = [
            ThreadPoolExecutor(1, thread_name_prefix=name) for name in ("source", "table", "model")
        ]
        try:
            yield cls(
                settings,
                source,
                embedder,
                table,
                on_batch,
                should_stop,
                source_thread=source_thread,
                table_thread=table_thread,
                model_thread=model_thread,
                recent=RecentEmbeddings(include_title=embedder.include_title),
            )
        finally:
            source.close()
            for thread in threads:
                thread.shutdown(wait=True, cancel_futures=True)


async def _export_day(
    stages: _Stages,
    progress: NonFatalProgressStore,
    day: date,
    trigger: str,
) -> RunRecord:
    settings = stages.settings
    window = business_day(day, settings.export.timezone)
    record = new_run_record(settings, window, trigger)
    structlog.contextvars.bind_contextvars(run_id=record.run_id, day=day.isoformat())
    lease = DayLease(progress, lease_name(settings, day), record.run_id)
    ttl = settings.export.lease_seconds
    if not await lease.acquire(ttl, settings.export.lock_wait_seconds):
        lock_out(record, ttl)
        log.error("run_locked_out")
        progress.save(record)
        structlog.contextvars.unbind_contextvars("run_id", "day")
        return record
    log.info("run_started", window_start=window.start.isoformat(), trigger=trigger)
    progress.save(record)
    close_interrupted_runs(progress, record)
    keep_alive = asyncio.create_task(lease.keep_alive(ttl))
    try:
        await _export_window(stages, window, record)
    except Exception as error:
        # Whatever stopped the run, its record must say FAILED and why, or the store would
        # show a RUNNING record forever.
        record.status = RunStatus.FAILED
        record.message = str(error) or type(error).__name__
        record.record_error(RunError("", "run", type(error).__name__, record.message))
        log.error("run_failed", error=record.message, exc_info=not isinstance(error, ExporterError))
    else:
        complete = record.counts.rejected == 0 and not record.message
        record.status = RunStatus.SUCCEEDED if complete else RunStatus.PARTIAL
    record.finished_at = datetime.now(UTC)
    progress.save(record)
    keep_alive.cancel()
    lease.release()
    log.info("run_finished", status=str(record.status), **dataclasses.asdict(record.counts))
    structlog.contextvars.unbind_contextvars("run_id", "day")
    return record


def close_interrupted_runs(progress: NonFatalProgressStore, current: RunRecord) -> None:
    """Record as FAILED the runs of this day still marked RUNNING: they were interrupted.

    A run killed, crashed or timed out (SIGKILL, out of memory, a Lambda timeout) cannot
    write its own outcome, so its record would claim RUNNING forever. Once this run holds the
    day's lease, no other run of the day is alive (a holder renews its lease while it lives),
    so those records are stale; this run redoes their work, and their records now say so.
    """
    for stale in progress.runs_on(current.business_date):
        if stale.status is not RunStatus.RUNNING or stale.run_id == current.run_id:
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


def lock_out(record: RunRecord, ttl_seconds: float) -> None:
    """Record as FAILED, and why, a run that found its day held by another run."""
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


@dataclasses.dataclass
class _Prepared:
    """A batch ready for the model: rows already complete, and sales with their photos."""

    settled: list[SaleRow]
    fetched: list[tuple[Sale, Photo]]
    counts: RunCounts
    stored: StoredRows


@dataclasses.dataclass
class _Uncommitted:
    """Embedded batches gathered for one commit: a commit per `commit_rows` rows keeps the
    files large and the snapshots few, while batches stay small enough to hold their photos."""

    tables: list[pa.Table] = dataclasses.field(default_factory=list)
    counts: RunCounts = dataclasses.field(default_factory=RunCounts)
    rows: int = 0


async def _export_window(stages: _Stages, window: Window, record: RunRecord) -> None:
    queue: asyncio.Queue[_Prepared | None] = asyncio.Queue(maxsize=1)
    uncommitted = _Uncommitted()
    async with PhotoFetcher(stages.settings.photos) as fetcher:
        producer = asyncio.create_task(_produce(stages, fetcher, window, record, queue))
        try:
            while (prepared := await queue.get()) is not None:
                await _embed_batch(stages, prepared, record, uncommitted)
                if uncommitted.rows >= stages.settings.export.commit_rows:
                    uncommitted = await _commit(stages, uncommitted, record)
            # Also when the source failed midway (the producer ends the queue either way): the
            # rows read before the failure are embedded already, and are kept.
            if uncommitted.counts.sales:
                await _commit(stages, uncommitted, record)
        finally:
            if not producer.done():
                producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer


async def _produce(
    stages: _Stages,
    fetcher: PhotoFetcher,
    window: Window,
    record: RunRecord,
    queue: asyncio.Queue[_Prepared | None],
) -> None:
    export = stages.settings.export
    batches = stages.source.read(window, export.batch_size, export.tenant_ids)
    try:
        while (batch := await _on(stages.source_thread, next, batches, None)) is not None:
            await queue.put(await _prepare(stages, fetcher, batch, record))
            if stages.should_stop():
                # What was read is committed; the rest of the window waits for the next run.
                record.message = "stopped before the end of the window; a later run completes it"
                log.warning("run_stopped_early")
                break
    finally:
        # Close the cursor on the thread that opened it: drivers and SQLite connections are
        # bound to their thread, and an abandoned generator would be closed by the collector.
        close = getattr(batches, "close", None)
        if close is not None:
            await _on(stages.source_thread, close)
        await queue.put(None)


async def _prepare(
    stages: _Stages, fetcher: PhotoFetcher, batch: SaleBatch, record: RunRecord
) -> _Prepared:
    sales, counts, errors = select_sales(batch, stages.settings.export.tenant_ids)
    for error in errors:
        record.record_error(error)
    stored = await _on(
        stages.table_thread,
        stages.table.stored,
        [sale.key for sale in sales],
        sold_within=sold_within(sales),
    )
    embedder = stages.embedder
    plan = plan_batch(
        sales, stored, embedder.model_id, counts, include_title=embedder.include_title
    )
    to_fetch: list[Sale] = []
    for sale in plan.to_fetch:
        if (embedding := stages.recent.get(sale)) is None:
            to_fetch.append(sale)
        else:
            # Embedded once already in this run, like a photo shared within a batch.
            plan.settled.append(SaleRow(sale, EmbeddingStatus.OK, embedding))
            counts.embedded += 1
    urls = sorted({sale.fetch_url for sale in to_fetch if sale.fetch_url})
    log.debug("photos_fetching", photos=len(urls))
    photos = dict(zip(urls, await fetcher.fetch_all(urls), strict=True))
    fetched, failed, errors = sort_photos(to_fetch, photos, counts)
    for error in errors:
        record.record_error(error)
    return _Prepared(plan.settled + failed, fetched, counts, stored)


async def _embed_batch(
    stages: _Stages, prepared: _Prepared, record: RunRecord, uncommitted: _Uncommitted
) -> None:
    log.debug("batch_embedding", photos=len(prepared.fetched))
    embedded, errors = await _on(
        stages.model_thread, embed_photos, stages.embedder, prepared.fetched, prepared.counts
    )
    for error in errors:
        record.record_error(error)
    stages.recent.remember(embedded)
    rows = prepared.settled + embedded
    to_write = changed_rows(rows, prepared.stored, prepared.counts)
    if to_write:
        uncommitted.tables.append(
            rows_to_arrow(
                to_write,
                source=stages.settings.export.source_name,
                run_id=record.run_id,
                exported_at=datetime.now(UTC),
            )
        )
        uncommitted.rows += len(to_write)
    uncommitted.counts.add(prepared.counts)
    log.debug("batch_embedded", **dataclasses.asdict(prepared.counts))


async def _commit(stages: _Stages, uncommitted: _Uncommitted, record: RunRecord) -> _Uncommitted:
    """Upsert the gathered batches in one snapshot; returns the next, empty, gathering."""
    if uncommitted.tables:
        await _on(
            stages.table_thread,
            stages.table.upsert,
            last_per_key(uncommitted.tables),
            run_id=record.run_id,
            business_date=record.business_date,
        )
    record.counts.add(uncommitted.counts)
    log.info("batch_committed", **dataclasses.asdict(uncommitted.counts))
    if stages.on_batch is not None:
        stages.on_batch(BatchDone(record.business_date, uncommitted.counts, *stages.position))
    return _Uncommitted()


async def _on(
    executor: ThreadPoolExecutor, function: Callable[..., T], *args: Any, **kwargs: Any
) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, lambda: function(*args, **kwargs))


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
    record.record_error(RunError("", "run", type(error).__name__, str(error)))
    log.error("run_failed", day=day.isoformat(), error=str(error))
    return record
