"""The export: source -> photos -> embeddings -> table, with a run record beside it.

This is the one place that wires the stages; the CLI, the scheduler and the Lambda handler all
call `export`. Within a window, work flows one way through two concurrent halves joined by a
bounded queue: the first reads a batch of sales, looks up what the table already holds and
fetches the photos still needed; the second embeds those photos and, every `commit_rows` rows
and at the end of the window, commits what it gathered as one snapshot. So the next batch's
photos download while this batch's are embedded, and a few parts of a batch's photos are in
memory however large the day and its photos (`photos.part_bytes`). What a batch goes through
is `batches.BatchSteps`, and a day's run from lease to outcome is `runs.DayRun`; the Ray
runner calls the same, elsewhere.

Blocking work runs on dedicated single-thread executors (one for the source, one for the table,
one for the model): database drivers and SQLite connections expect to stay on one thread, and
the event loop stays free to drive the photo downloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from typing import Any, TypeVar

import structlog

from smartgo_exporter.batches import BatchSteps, FinishedBatch, Gathering, PreparedBatch
from smartgo_exporter.config import Settings
from smartgo_exporter.day_plan import DayPlan, due_with
from smartgo_exporter.embedders import Embedder, load_embedder
from smartgo_exporter.errors import ExporterError
from smartgo_exporter.index import sync_after_export
from smartgo_exporter.photo_fetcher import PhotoFetcher
from smartgo_exporter.photo_retries import RetryPolicy
from smartgo_exporter.progress import NonFatalProgressStore, ProgressStore, load_progress_store
from smartgo_exporter.run_records import LOOKBACK_TRIGGER, RunCounts, RunRecord, RunStatus
from smartgo_exporter.runs import (
    BatchDone,
    DayCallback,
    DayDone,
    DayRun,
    ProgressCallback,
    failed_run_record,
)
from smartgo_exporter.sales import Key
from smartgo_exporter.schema import StoredRows
from smartgo_exporter.sinks.iceberg import SalesTable
from smartgo_exporter.sources import Source, load_source
from smartgo_exporter.windows import Window, business_day, ensure_over, yesterday

log = structlog.get_logger(__name__)

T = TypeVar("T")

STOPPED_EARLY = "stopped before the end of the window; a later run completes it"
StopCheck = Callable[[], bool]
"""Asked before each new batch; True stops the run there (a time budget, a SIGTERM)."""


def export(
    settings: Settings,
    days: Sequence[date] | None = None,
    *,
    lookback: Sequence[date] = (),
    trigger: str = "manual",
    on_batch: ProgressCallback | None = None,
    on_day: DayCallback | None = None,
    should_stop: StopCheck | None = None,
    source: Source | None = None,
    embedder: Embedder | None = None,
    progress: ProgressStore | None = None,
    retry_failed: bool = False,
) -> list[RunRecord]:
    """Export each day, one run (and one run record) per day, and return the records.

    With no `days`, exports yesterday in the business time zone and catches up on the days
    missed since the last successful run (or, when the progress store knows of none, since the
    last day the table's snapshots name), then reads the `lookback_days` days before yesterday
    again (see `day_plan.plan_days`). `lookback` days given with `days` run after them the
    same way: with the trigger "lookback", each a run of its own. A day starts reading once
    the day before has read its whole window, while that one's photos are still embedded and
    committed. A run-wide failure (source unreachable, model or table unavailable) is recorded
    as FAILED and ends the export there (the day already started beside it runs its course):
    later days would fail alike, and as the last successful day has not moved, the next run
    catches them up. The caller decides from the statuses what to exit with.

    When `should_stop` answers True, the batches already read are committed, the run is
    recorded PARTIAL and no further day is started. A day of `days` that has not ended yet
    raises DayNotOver before anything is read or recorded.

    `on_batch` hears of each committed batch, `on_day` of each run record as it is saved with
    its outcome (the records returned, one by one), for a progress display.

    A photo that failed for good in an earlier run is fetched again only once its back-off
    (`photos.retry_backoff_days`) has passed; `retry_failed` fetches every failed photo again
    (see `photo_retries`).

    `source`, `embedder` and `progress` stand in for the stages the settings would open, as
    httpx takes a `transport=`: a wrapped source, a model already loaded, a store of the
    caller's. What is passed in is the caller's to close; what export opens, it closes.
    """
    ensure_over([*(days or ()), *lookback], settings.export.timezone)
    store = (
        NonFatalProgressStore(progress)
        if progress is not None
        else NonFatalProgressStore.connect(
            lambda: load_progress_store(settings.progress, retention_days=settings.retention_days)
        )
    )
    try:
        records: list[RunRecord] = []
        retries = RetryPolicy.of(settings.photos, retry_failed=retry_failed)
        with _Stages.open(settings, source, embedder, retries) as stages:
            plan = (
                due_with(settings, store, stages.table.last_exported_day)
                if days is None
                else DayPlan(list(days), list(lookback))
            )
            days = plan.all_days
            runs = [(day, trigger) for day in plan.days]
            runs += [(day, LOOKBACK_TRIGGER) for day in plan.lookback]
            days_export = _DaysExport(stages, store, on_batch, on_day, should_stop, records)
            asyncio.run(days_export.run(runs))
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
        store.save(record)
        if on_day is not None:
            on_day(DayDone(record, 1, len(days) if days else 1))
        return [record]
    finally:
        if progress is None:
            store.close()


@dataclasses.dataclass
class _Stages:
    """What every day of one export call shares: the stages, their threads, and the steps
    (whose memory of embeddings made earlier spans the days)."""

    settings: Settings
    source: Source
    embedder: Embedder
    table: SalesTable
    steps: BatchSteps
    source_thread: ThreadPoolExecutor
    table_thread: ThreadPoolExecutor
    model_thread: ThreadPoolExecutor

    @classmethod
    @contextlib.contextmanager
    def open(
        cls,
        settings: Settings,
        source: Source | None,
        embedder: Embedder | None,
        retries: RetryPolicy,
    ) -> Iterator[_Stages]:
        # The model and the table are opened first: they fail fast on a bad install or catalog,
        # before the source is touched.
        model = embedder or load_embedder(settings.embedder)
        table = SalesTable.open(settings.table, source=settings.export.source_name)
        sales = source or load_source(settings.source)
        threads = [
            ThreadPoolExecutor(1, thread_name_prefix=name) for name in ("source", "table", "model")
        ]
        try:
            yield cls(
                settings,
                sales,
                model,
                table,
                BatchSteps(settings.export, model.model_id, model.include_title, retries),
                *threads,
            )
        finally:
            if source is None:
                sales.close()
            for thread in threads:
                thread.shutdown(wait=True, cancel_futures=True)


MODEL_SIDE_PARTS = 2
"""Parts of batches queued for the model or in it, across the days of an export call: one
embedded while the next waits, so the model never waits for a download."""


@dataclasses.dataclass
class _DaysExport:
    """The days of one export call, a run each, read ahead where it costs nothing: once a day
    has read its whole window, the next day reads and downloads while that one is embedded
    and committed. A day of few sales is one batch, read, fetched, embedded and committed in
    turn; one after another, a range of such days kept a core idle.

    The day read ahead begins (takes its lease, records its run) only when the day before has
    ended, and not at all if that one FAILED: it then waits for the next run, as it did when
    days ran one after another. At most two days run at once; they share one photo fetcher
    (its concurrency limit holds for both) and `MODEL_SIDE_PARTS`, so the photos in memory
    stay bounded as for one.
    """

    stages: _Stages
    progress: NonFatalProgressStore
    on_batch: ProgressCallback | None
    on_day: DayCallback | None
    should_stop: StopCheck | None
    records: list[RunRecord]
    """The records in day order, as each day ends: what `export` returns, also when the
    event loop is interrupted."""

    async def run(self, runs: Sequence[tuple[date, str]]) -> None:
        model_side = asyncio.Semaphore(MODEL_SIDE_PARTS)
        async with PhotoFetcher(self.stages.settings.photos) as fetcher:
            earlier: _Started | None = None
            for number, (day, trigger) in enumerate(runs):
                if earlier is not None:
                    await earlier.day.reading_done.wait()
                    # A day that did not read its whole window (its source failed, it was
                    # stopped) ends before the next is read, so that the next sees its outcome.
                    if not earlier.day.read_whole:
                        if not await self._end(earlier, len(runs)):
                            return
                        earlier = None
                if number and self.should_stop is not None and self.should_stop():
                    break
                day_export = _DayExport(
                    self.stages,
                    self.progress,
                    (number, len(runs)),
                    self.on_batch,
                    self.should_stop,
                    fetcher,
                    model_side,
                )
                after = None if earlier is None else earlier.ended
                task = asyncio.create_task(day_export.run(day, trigger, after))
                current = _Started(day_export, task)
                if earlier is not None and not await self._end(earlier, len(runs)):
                    await self._end(current, len(runs))  # dropped, unrecorded
                    return
                earlier = current
            if earlier is not None:
                await self._end(earlier, len(runs))

    async def _end(self, started: _Started, days: int) -> bool:
        """Wait for a day's run and report its record; False when it FAILED (or was dropped),
        which ends the export: later days would fail alike, and the next run catches them up.
        """
        record = await started.task
        went_on = record is not None and record.status is not RunStatus.FAILED
        started.ended.set_result(went_on)
        if record is not None:
            self.records.append(record)
            if self.on_day is not None:
                self.on_day(DayDone(record, len(self.records), days))
        return went_on


@dataclasses.dataclass
class _Started:
    """A day under way, and whether it went on (ended and did not fail), for the next."""

    day: _DayExport
    task: asyncio.Task[RunRecord | None]
    ended: asyncio.Future[bool] = dataclasses.field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclasses.dataclass
class _DayExport:
    """One day of an export call: its run, driven through the stages' threads."""

    stages: _Stages
    progress: NonFatalProgressStore
    position: tuple[int, int]
    """(days done, days in this export call), for BatchDone."""
    on_batch: ProgressCallback | None
    should_stop: StopCheck | None
    fetcher: PhotoFetcher
    model_side: asyncio.Semaphore
    """A permit per part queued for the model or in it (`MODEL_SIDE_PARTS`)."""
    reading_done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    """Set once the day has stopped reading, for whatever reason, or its run has ended."""
    read_whole: bool = False
    """Whether it read its whole window: the next day may be read ahead beside it."""

    async def run(self, day: date, trigger: str, after: Awaitable[bool] | None) -> RunRecord | None:
        """The day's run, begun at once or, with `after`, read ahead and begun once `after`
        says the day before went on; None (nothing recorded) when it says that day failed."""
        try:
            run = DayRun.planned(self.stages.settings, self.progress, day, trigger)
            with structlog.contextvars.bound_contextvars(run_id=run.record.run_id, day=str(day)):
                try:
                    window = business_day(day, self.stages.settings.export.timezone)
                    begun = await self._export_window(window, run, after)
                except Exception as error:
                    # Whatever stopped the run, its record must say FAILED and why, or the
                    # store would show a RUNNING record forever.
                    return run.fail(error)
                if not begun:
                    return run.record if run.record.finished else None
                return run.finish()
        finally:
            self.reading_done.set()

    async def _export_window(
        self, window: Window, run: DayRun, after: Awaitable[bool] | None
    ) -> bool:
        """Read, embed and commit the window; False if the run never began (the day before
        failed, or another run holds the day), with nothing of it committed."""
        record = run.record
        if after is None and not await _began(run):
            return False
        queue: asyncio.Queue[PreparedBatch | _ReadEnded] = asyncio.Queue()
        gathering = Gathering()
        stages = self.stages
        commit_rows = stages.settings.export.commit_rows
        producer = asyncio.create_task(self._produce(window, record, queue))
        ahead = (
            None if after is None else _ReadAhead(asyncio.ensure_future(_began_after(run, after)))
        )
        try:
            try:
                while isinstance(item := await self._finish_next(queue, record), FinishedBatch):
                    if ahead is None:
                        gathering.add(item, record)
                    else:
                        ahead.hold(item)
                        if ahead.rows < commit_rows and not ahead.beginning.done():
                            continue
                        if not await ahead.begin_into(gathering, record):
                            return False
                        ahead = None
                    if gathering.rows >= commit_rows:
                        await self._commit(gathering.commit, record)
                if ahead is not None:
                    if not await ahead.begin_into(gathering, record):
                        return False
                    ahead = None
            except Exception:
                # A failure met reading ahead (the model's, say) is the run's only if the run
                # begins; if the day before failed, it is dropped with the day.
                if ahead is not None and not await ahead.beginning:
                    return False
                raise
            if item.complete:
                tenants = stages.settings.export.tenant_ids
                await self._commit(
                    functools.partial(gathering.finish_day, tenant_ids=tenants), record
                )
            # Also when the source failed midway (the producer ends the queue either way):
            # the rows read before the failure are embedded already, and are kept.
            elif gathering.counts.sales:
                await self._commit(gathering.commit, record)
            return True
        finally:
            if not producer.done():
                producer.cancel()
            # A run that never began has nothing to record, not even its source's failure.
            begun = ahead is None or (ahead.beginning.done() and ahead.beginning.result())
            with contextlib.suppress(asyncio.CancelledError, *(() if begun else (Exception,))):
                await producer
            while not queue.empty():
                if isinstance(queue.get_nowait(), PreparedBatch):
                    self.model_side.release()

    async def _finish_next(
        self, queue: asyncio.Queue[PreparedBatch | _ReadEnded], record: RunRecord
    ) -> FinishedBatch | _ReadEnded:
        """The next part through the model, or how the read ended. The part (and its photos)
        is held by this call alone, and let go of as it returns its permit, so that the
        permits bound the photos held."""
        item = await queue.get()
        if isinstance(item, _ReadEnded):
            return item
        stages = self.stages
        try:
            return await _on(
                stages.model_thread, stages.steps.finish, item, stages.embedder, record.run_id
            )
        finally:
            self.model_side.release()

    async def _produce(
        self, window: Window, record: RunRecord, queue: asyncio.Queue[PreparedBatch | _ReadEnded]
    ) -> None:
        stages, export = self.stages, self.stages.settings.export
        batches = stages.source.read(window, export.batch_size, export.tenant_ids)
        complete = False
        try:
            while (batch := await _on(stages.source_thread, next, batches, None)) is not None:
                parts = stages.steps.prepare(batch, self._stored, self.fetcher, record.started_at)
                async with contextlib.aclosing(parts):
                    async for prepared in parts:
                        await self.model_side.acquire()
                        queue.put_nowait(prepared)  # with its permit: nothing awaited between
                if self.should_stop is not None and self.should_stop():
                    # What was read is committed; the rest of the window waits for the next run.
                    record.message = STOPPED_EARLY
                    log.warning("run_stopped_early")
                    break
            else:
                complete = True
        finally:
            # Close the cursor on the thread that opened it: drivers and SQLite connections are
            # bound to their thread, and an abandoned generator would be closed by the collector.
            close = getattr(batches, "close", None)
            if close is not None:
                await _on(stages.source_thread, close)
            queue.put_nowait(_ReadEnded(complete))
            self.read_whole = complete
            self.reading_done.set()

    async def _stored(
        self, keys: list[Key], sold_within: tuple[datetime, datetime] | None
    ) -> StoredRows:
        stages = self.stages
        return await _on(stages.table_thread, stages.table.stored, keys, sold_within=sold_within)

    async def _commit(self, commit: Callable[..., RunCounts], record: RunRecord) -> None:
        """Run `commit` (a Gathering's `commit` or `finish_day`) on the table's thread."""
        committed = await _on(self.stages.table_thread, commit, self.stages.table, record)
        if self.on_batch is not None:
            self.on_batch(BatchDone(record.business_date, committed, *self.position))


async def _began(run: DayRun) -> bool:
    """Begin the run; False when another run holds the day (it is then recorded so)."""
    await run.begin()
    return not run.record.finished


async def _began_after(run: DayRun, after: Awaitable[bool]) -> bool:
    """Begin the run once the day before went on; False if it did not, or as `_began`."""
    return await after and await _began(run)


@dataclasses.dataclass
class _ReadAhead:
    """A day read ahead: its parts go through the model too, and wait finished (up to a
    commit's rows) for the day before to end; only then are they recorded and committed, or
    dropped with the day if that one failed."""

    beginning: asyncio.Future[bool]
    """`_began_after` the day before."""
    held: list[FinishedBatch] = dataclasses.field(default_factory=list)
    rows: int = 0

    def hold(self, finished: FinishedBatch) -> None:
        self.held.append(finished)
        self.rows += finished.rows.num_rows if finished.rows is not None else 0

    async def begin_into(self, gathering: Gathering, record: RunRecord) -> bool:
        """Wait for the run to begin and gather what was held; False if it did not begin."""
        if not await self.beginning:
            return False
        for finished in self.held:
            gathering.add(finished, record)
        self.held = []
        return True


@dataclasses.dataclass(frozen=True)
class _ReadEnded:
    """The producer's last item: whether it read the whole window (no failure, no stop)."""

    complete: bool


async def _on(
    executor: ThreadPoolExecutor, function: Callable[..., T], *args: Any, **kwargs: Any
) -> T:
    """Run `function` on `executor`, in this task's context, so its logs name the run."""
    call = functools.partial(contextvars.copy_context().run, function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor, call)
