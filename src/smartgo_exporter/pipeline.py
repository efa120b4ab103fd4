"""The export: source -> photos -> embeddings -> table, with a run record beside it.

This is the one place that wires the stages; the CLI, the scheduler and the Lambda handler all
call `export`. Within a window, work flows one way through two concurrent halves joined by a
bounded queue: the first reads a batch of sales, looks up what the table already holds and
fetches the photos still needed; the second embeds those photos and gathers them for a commit,
made every `commit_rows` rows and at the end of a day, or of several small days
(`day_commits`). So the next batch's photos download while this batch's are embedded, and a
few parts of a batch's photos are in memory however large the day and its photos
(`photos.part_bytes`). What a batch goes through is `batches.BatchSteps`, and a day's run from
lease to outcome is `runs.DayRun`; the Ray runner calls the same, elsewhere.

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

from smartgo_exporter.batches import BatchSteps, FinishedBatch, PreparedBatch
from smartgo_exporter.config import Settings
from smartgo_exporter.day_commits import DayCommits
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
    the day before has read its whole window, while that one's photos are still embedded, and
    the days share commits (`day_commits`): a day is recorded with its outcome once the commit
    holding its end has landed, and a commit that fails fails every day it held. A run-wide
    failure (source unreachable, model or table unavailable) is recorded as FAILED and ends the
    export there (the days already started beside it run their course): later days would fail
    alike, and as the last successful day has not moved, the next run catches them up. The
    caller decides from the statuses what to exit with.

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
    """The days of one export call, a run each, kept flowing across day boundaries: once a
    day has read its whole window, the next day reads and downloads while that one is embedded,
    and a day that has gathered its last batch waits for a commit shared with the days after
    it (`day_commits`). A day of few sales is one batch; one after another, with a commit
    each, a range of such days kept a core idle and paid a commit a day.

    The day read ahead begins (takes its lease, records its run) only when the day before has
    gathered its last batch, and not at all if that one FAILED: it then waits for the next
    run, as it did when days ran one after another. Days read share one photo fetcher (its
    concurrency limit holds for all) and `MODEL_SIDE_PARTS`, so the photos in memory stay
    bounded as for one day.
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
        positions: dict[str, tuple[int, int]] = {}

        def committed(record: RunRecord, counts: RunCounts) -> None:
            if self.on_batch is not None:
                done, total = positions[record.run_id]
                self.on_batch(BatchDone(record.business_date, counts, done, total))

        stages = self.stages
        export = stages.settings.export
        commits = DayCommits(
            stages.table, stages.table_thread, export.commit_rows, export.commit_seconds, committed
        )
        started: asyncio.Queue[_Started | None] = asyncio.Queue()
        collector = asyncio.create_task(self._collect(started, len(runs)))
        async with PhotoFetcher(stages.settings.photos) as fetcher:
            days = _Days(
                stages,
                self.progress,
                fetcher,
                commits,
                self.should_stop or (lambda: False),
                positions,
                len(runs),
            )
            last = await self._start(runs, days, started)
            if last is not None:
                await last.day.settled.wait()
            await commits.flush()
            started.put_nowait(None)
            await collector

    async def _collect(self, started: asyncio.Queue[_Started | None], total: int) -> None:
        """Report each day's record, in day order, as its run ends."""
        while (day := await started.get()) is not None:
            record = await day.task
            if record is not None:
                self.records.append(record)
                if self.on_day is not None:
                    self.on_day(DayDone(record, len(self.records), total))

    async def _start(
        self,
        runs: Sequence[tuple[date, str]],
        days: _Days,
        started: asyncio.Queue[_Started | None],
    ) -> _Started | None:
        """Start each day in turn, the next once the one before has read its window; returns
        the last day started."""
        earlier: _Started | None = None
        for number, (day, trigger) in enumerate(runs):
            if earlier is not None:
                await earlier.day.reading_done.wait()
                # A day that did not read its whole window (its source failed, it was
                # stopped) ends before the next is read, so that the next sees its outcome.
                if not earlier.day.read_whole:
                    record = await earlier.task
                    if record is None or record.status is RunStatus.FAILED:
                        return earlier
            if (number and days.should_stop()) or days.commits.failure is not None:
                break
            day_export = _DayExport(days, number, last=number == len(runs) - 1)
            after = None if earlier is None else earlier.day.handed
            current = _Started(day_export, asyncio.create_task(day_export.run(day, trigger, after)))
            started.put_nowait(current)
            # The day before may still fail before its end is handed on: this one is then
            # dropped, unrecorded, and the export ends (later days would fail alike).
            if after is not None and not await after:
                return current
            earlier = current
        return earlier


@dataclasses.dataclass
class _Days:
    """What the days of an export call share, and make each `_DayExport` from."""

    stages: _Stages
    progress: NonFatalProgressStore
    fetcher: PhotoFetcher
    commits: DayCommits
    should_stop: StopCheck
    positions: dict[str, tuple[int, int]]
    """(days done before, days of the call) by run id, for BatchDone."""
    total: int
    model_side: asyncio.Semaphore = dataclasses.field(
        default_factory=lambda: asyncio.Semaphore(MODEL_SIDE_PARTS)
    )


@dataclasses.dataclass
class _Started:
    """A day under way."""

    day: _DayExport
    task: asyncio.Task[RunRecord | None]


@dataclasses.dataclass
class _DayExport:
    """One day of an export call: its run, driven through the stages' threads."""

    days: _Days
    number: int
    """Its place in the export call, from 0."""
    last: bool
    """The call's last day: its end commits at once, with the days waiting before it."""
    reading_done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    """Set once the day has stopped reading, for whatever reason, or its run has ended."""
    read_whole: bool = False
    """Whether it read its whole window: the next day may be read ahead beside it."""
    handed: asyncio.Future[bool] = dataclasses.field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    """True once its last batch is gathered for a commit: the next day may begin. False if
    the run ends before (it failed, or never began)."""
    settled: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    """Set once the run waits for its last commit, or has ended."""

    async def run(self, day: date, trigger: str, after: Awaitable[bool] | None) -> RunRecord | None:
        """The day's run, begun at once or, with `after`, read ahead and begun once `after`
        says the day before went on; None (nothing recorded) when it says that day failed."""
        stages = self.days.stages
        try:
            run = DayRun.planned(stages.settings, self.days.progress, day, trigger)
            with structlog.contextvars.bound_contextvars(run_id=run.record.run_id, day=str(day)):
                self.days.positions[run.record.run_id] = (self.number, self.days.total)
                try:
                    window = business_day(day, stages.settings.export.timezone)
                    begun = await self._export_window(window, run, after)
                except Exception as error:
                    # Whatever stopped the run, its record must say FAILED and why, or the
                    # store would show a RUNNING record forever.
                    return run.fail(error)
                if not begun:
                    return run.record if run.record.finished else None
                return run.finish()
        finally:
            if not self.handed.done():
                self.handed.set_result(False)
            self.reading_done.set()
            self.settled.set()

    async def _export_window(
        self, window: Window, run: DayRun, after: Awaitable[bool] | None
    ) -> bool:
        """Read, embed and commit the window; False if the run never began (the day before
        failed, or another run holds the day), with nothing of it committed."""
        record = run.record
        if after is None and not await _began(run):
            return False
        queue: asyncio.Queue[PreparedBatch | _ReadEnded] = asyncio.Queue()
        stages, commits = self.days.stages, self.days.commits
        commit_rows = stages.settings.export.commit_rows
        producer = asyncio.create_task(self._produce(window, record, queue))
        ahead = (
            None if after is None else _ReadAhead(asyncio.ensure_future(_began_after(run, after)))
        )
        try:
            try:
                while isinstance(item := await self._finish_next(queue, record), FinishedBatch):
                    if ahead is None:
                        await commits.add(item, record)
                        continue
                    ahead.hold(item)
                    if ahead.rows < commit_rows and not ahead.beginning.done():
                        continue
                    if not await ahead.begin_into(commits, record):
                        return False
                    ahead = None
                if ahead is not None:
                    if not await ahead.begin_into(commits, record):
                        return False
                    ahead = None
            except Exception:
                # A failure met reading ahead (the model's, say) is the run's only if the run
                # begins; if the day before failed, it is dropped with the day.
                if ahead is not None and not await ahead.beginning:
                    return False
                raise
            # Also when the source failed midway (the producer ends the queue either way):
            # the rows read before the failure are embedded already, and are kept, with
            # nothing removed; such a day commits at once, so the next day sees its outcome.
            tenants = stages.settings.export.tenant_ids if item.complete else None
            self.handed.set_result(True)
            self.settled.set()
            await commits.end_day(record, tenants, now=self.last or not item.complete)
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
                    self.days.model_side.release()

    async def _finish_next(
        self, queue: asyncio.Queue[PreparedBatch | _ReadEnded], record: RunRecord
    ) -> FinishedBatch | _ReadEnded:
        """The next part through the model, or how the read ended. The part (and its photos)
        is held by this call alone, and let go of as it returns its permit, so that the
        permits bound the photos held."""
        item = await queue.get()
        if isinstance(item, _ReadEnded):
            return item
        stages = self.days.stages
        try:
            return await _on(
                stages.model_thread, stages.steps.finish, item, stages.embedder, record.run_id
            )
        finally:
            self.days.model_side.release()

    async def _produce(
        self, window: Window, record: RunRecord, queue: asyncio.Queue[PreparedBatch | _ReadEnded]
    ) -> None:
        stages, export = self.days.stages, self.days.stages.settings.export
        batches = stages.source.read(window, export.batch_size, export.tenant_ids)
        complete = False
        try:
            while (batch := await _on(stages.source_thread, next, batches, None)) is not None:
                parts = stages.steps.prepare(
                    batch, self._stored, self.days.fetcher, record.started_at
                )
                async with contextlib.aclosing(parts):
                    async for prepared in parts:
                        await self.days.model_side.acquire()
                        queue.put_nowait(prepared)  # with its permit: nothing awaited between
                if self.days.should_stop():
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
        stages = self.days.stages
        return await _on(stages.table_thread, stages.table.stored, keys, sold_within=sold_within)


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
    commit's rows) for the day before to hand on its end; only then are they gathered, or
    dropped with the day if that one failed."""

    beginning: asyncio.Future[bool]
    """`_began_after` the day before."""
    held: list[FinishedBatch] = dataclasses.field(default_factory=list)
    rows: int = 0

    def hold(self, finished: FinishedBatch) -> None:
        self.held.append(finished)
        self.rows += finished.rows.num_rows if finished.rows is not None else 0

    async def begin_into(self, commits: DayCommits, record: RunRecord) -> bool:
        """Wait for the run to begin and gather what was held; False if it did not begin."""
        if not await self.beginning:
            return False
        for finished in self.held:
            await commits.add(finished, record)
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
