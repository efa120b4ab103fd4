"""Backfills on a Ray cluster: the export's stages as a Ray Data pipeline, with one committer.

A backfill is many days that do not depend on each other, so on a cluster they run at once.
The days are the blocks of a Ray dataset. A task per day reads its sales in batches, looks up
what the table already holds and fetches the photos still needed; an actor pool sized from the
cluster's CPUs embeds them, each actor loading the model once, and keeps the rows that changed;
the driver is the one committer: it takes each day's batches in the order they were read,
upserts them every `commit_rows` rows and at the end of the day, and writes the day's run record.
What a batch goes through is `batches.BatchSteps`, the local runner's own steps, so the table
comes out as `pipeline.export` would write it; this module only decides where each step runs.

A day too large for one reading task is split by tenant: `ray.tenant_shards` tasks read it,
the tenants of `export.tenant_ids` dealt among them (`tenant_shards`). Each shard is a block of
its own, and the driver takes each shard's batches in their order into the day's one run. The
day ends when every shard has: all read whole, its last commit reconciles the configured
tenants, as an unsplit read would; a shard failed, nothing is removed and the day fails, as
when a local read fails midway. The shards' batches interleave, so a split day records the
same errors as the local runner, in another order.

Per day, the run is the local runner's `runs.DayRun`: its lease is held while it runs (here
every day is leased up front, since all run at once), a RUNNING record is saved at its start and
its outcome at its end, with the same counts and errors. One thing differs: a failed day does
not stop the others, which are running already; each gets its own record.

Between stages, an item is one pickled dataclass in a binary column: Ray Data then has nothing
to infer, and a batch arrives as the same Python objects the local runner hands on.

    records = export_on_ray(settings, [date(2026, 11, 1), date(2026, 11, 2)], address="auto")
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import pickle
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from typing import Any

import numpy as np
import structlog

from smartgo_exporter.batches import (
    BatchSteps,
    FinishedBatch,
    Gathering,
    PreparedBatch,
    StoredLookup,
)
from smartgo_exporter.config import EmbedderConfig, ExportConfig, LocalEmbedderConfig, Settings
from smartgo_exporter.embedders import load_embedder
from smartgo_exporter.errors import ExporterError
from smartgo_exporter.logs import configure_logging
from smartgo_exporter.photo_fetcher import PhotoFetcher
from smartgo_exporter.photo_retries import RetryPolicy
from smartgo_exporter.progress import NonFatalProgressStore, load_progress_store

# From ray_cluster, which says what to install when Ray is missing, rather than ImportError.
from smartgo_exporter.ray_cluster import ray, ray_session, without_ray_progress_bars
from smartgo_exporter.run_records import RunError, RunRecord
from smartgo_exporter.runs import (
    BatchDone,
    DayCallback,
    DayDone,
    DayRun,
    ProgressCallback,
    failed_run_record,
    run_failure,
)
from smartgo_exporter.sales import Key
from smartgo_exporter.schema import StoredRows
from smartgo_exporter.sinks.iceberg import SalesTable
from smartgo_exporter.sources import SaleBatch, load_source
from smartgo_exporter.windows import business_day

log = structlog.get_logger(__name__)

ITEM = "item"
"""The dataset's one column: a pickled _DayToRead, _Fetched, _Embedded or _DayRead."""
MODEL_CPUS = 1
"""CPUs each model actor reserves; the local model runs that many threads in it."""
READ_CPUS = 0.5
"""CPUs a day's reading task reserves: it mostly waits on the database and the photo servers."""


@dataclasses.dataclass(frozen=True)
class _DayToRead:
    """A block of the input dataset: one day to export, under its run's id."""

    day: date
    run_id: str
    started_at: datetime
    """The run's start, by which its failed photos fall due again (as locally)."""
    shard: int
    """Which of the day's reading tasks this is, from 0."""
    tenant_ids: tuple[str, ...]
    """The tenants this task reads; empty: every tenant, when the day is not split."""


@dataclasses.dataclass
class _Fetched:
    """A batch read, planned against the table and with its photos fetched, for the model."""

    day: date
    run_id: str
    shard: int
    sequence: int
    """The batch's place in its shard's stream, from 0: the committer takes them in order."""
    prepared: PreparedBatch


@dataclasses.dataclass
class _Embedded:
    """A batch through the model: finished, or the failure that fails its day."""

    day: date
    shard: int
    sequence: int
    finished: FinishedBatch | None
    failure: RunError | None = None
    """Why the model failed the whole batch; the day then fails, as in the local runner."""


@dataclasses.dataclass
class _DayRead:
    """A shard's last item: how many batches came before it, and what stopped the reading
    early; without a failure, the shard was read whole."""

    day: date
    shard: int
    sequence: int
    failure: RunError | None = None


def export_on_ray(
    settings: Settings,
    days: Sequence[date],
    *,
    address: str | None = None,
    trigger: str = "backfill",
    on_batch: ProgressCallback | None = None,
    on_day: DayCallback | None = None,
    retry_failed: bool = False,
) -> list[RunRecord]:
    """Export each day on Ray, one run record per day, and return the records in day order.

    Runs on the Ray already initialised in this process if there is one; otherwise connects to
    `address` (a cluster's `host:port`, `auto` or `ray://...`), or, when it is None, goes
    where `ray.init()` goes (RAY_ADDRESS, a Ray started on this machine, else a new local
    instance), and disconnects again (stopping what it started) at the end; RunnerUnavailable
    when Ray cannot be reached or started. As in `pipeline.export`, a model, table or source
    that cannot even be opened fails the first day, and a day whose lease another run holds is
    recorded FAILED and left alone. `on_batch` and `on_day` are called as by `pipeline.export`
    (the days run at once, so they end in any order), and `retry_failed` is as there.
    """
    if not days:
        return []
    progress = NonFatalProgressStore.connect(
        lambda: load_progress_store(settings.progress, retention_days=settings.retention_days)
    )
    try:
        with ray_session(address), without_ray_progress_bars():
            try:
                # Opened here first, as the local runner opens them: a bad install, catalog or
                # source fails the first day before any starts; and the model's id decides
                # which stored embeddings the tasks reuse.
                embedder = load_embedder(settings.embedder)
                table = SalesTable.open(settings.table, source=settings.export.source_name)
                load_source(settings.source).close()
            except ExporterError as error:
                record = failed_run_record(settings, days[0], trigger, error)
                progress.save(record)
                if on_day is not None:
                    on_day(DayDone(record, 1, len(days)))
                return [record]
            backfill = _Backfill(
                settings, progress, table, trigger, on_batch, on_day, len(days), retry_failed
            )
            return asyncio.run(backfill.run(days, embedder.model_id, embedder.include_title))
    finally:
        progress.close()


def tenant_shards(tenant_ids: Sequence[str], shards: int) -> list[tuple[str, ...]]:
    """The tenants each reading task of a day reads: `tenant_ids` dealt in turn among up to
    `shards` tasks, or one task of them all (`()`: every tenant) when they cannot be split.

        tenant_shards(["a", "b", "c"], 2) == [("a", "c"), ("b",)]
    """
    count = min(shards, len(tenant_ids))
    if count < 2:
        return [tuple(tenant_ids)]
    return [tuple(tenant_ids[start::count]) for start in range(count)]


@dataclasses.dataclass
class _Day:
    """The committer's view of one day in flight."""

    run: DayRun
    shards: int
    next_sequence: dict[int, int] = dataclasses.field(default_factory=dict)
    """By shard: the sequence of the batch the committer takes next."""
    arrived: dict[tuple[int, int], _Embedded | _DayRead] = dataclasses.field(default_factory=dict)
    """Items that came before an earlier batch of their shard, by (shard, sequence)."""
    read: dict[int, RunError | None] = dataclasses.field(default_factory=dict)
    """The shards whose last item was taken, with what stopped each early, if anything."""
    gathering: Gathering = dataclasses.field(default_factory=Gathering)


class _Backfill:
    """The driver: leases and records every day, runs the dataset, and commits its output."""

    def __init__(
        self,
        settings: Settings,
        progress: NonFatalProgressStore,
        table: SalesTable,
        trigger: str,
        on_batch: ProgressCallback | None,
        on_day: DayCallback | None,
        days_total: int,
        retry_failed: bool,
    ) -> None:
        self.settings = settings
        self.retry_failed = retry_failed
        self.progress = progress
        self.table = table
        self.trigger = trigger
        self.on_batch = on_batch
        self.on_day = on_day
        self.days_total = days_total
        self.days_done = 0
        self.running: dict[date, _Day] = {}
        self.shards = tenant_shards(settings.export.tenant_ids, settings.ray.tenant_shards)
        # Commits run off the event loop, which keeps renewing the leases meanwhile, and one
        # after another on one thread, as the catalog's database connections expect.
        self.table_thread = ThreadPoolExecutor(1, thread_name_prefix="table")

    async def run(
        self, days: Sequence[date], model_id: str, include_title: bool
    ) -> list[RunRecord]:
        try:
            started = await asyncio.gather(*(self._start(day) for day in days))
            if self.running:
                dataset = self._dataset(model_id, include_title)
                try:
                    await self._commit_output(dataset)
                except Exception as error:
                    # The dataset itself failed (an actor that could not load the model on its
                    # node, a lost worker): no running day can complete.
                    log.error("backfill_failed", error=str(error), exc_info=True)
                    for day in list(self.running.values()):
                        self._finish(day, run_failure(error))
            return list(started)
        finally:
            # Only when the backfill itself is stopped (Ctrl-C): its days' records say so.
            stopped = RunError("", "run", "interrupted", "the backfill stopped before this day")
            for day in list(self.running.values()):
                self._finish(day, stopped)
            self.table_thread.shutdown(wait=True, cancel_futures=True)

    async def _start(self, day: date) -> RunRecord:
        run = DayRun.planned(self.settings, self.progress, day, self.trigger, runner="ray")
        await run.begin()
        if run.record.finished:
            self._day_done(run.record)
        else:
            self.running[day] = _Day(run, len(self.shards))
        return run.record

    def _dataset(self, model_id: str, include_title: bool) -> ray.data.Dataset:
        """Days' shards -> batches with their photos (tasks) -> embedded rows (the model's
        actor pool)."""
        log_level = _log_level()
        orders = [
            _pack(
                _DayToRead(
                    day, running.run.record.run_id, running.run.record.started_at, shard, tenants
                )
            )
            for day, running in self.running.items()
            for shard, tenants in enumerate(self.shards)
        ]
        # One CPU is left to the reading tasks, so the actors can never take every CPU and
        # starve the stage that feeds them.
        cpus = ray.cluster_resources().get("CPU", 1)  # type: ignore[no-untyped-call]
        pool = max(1, int(cpus) - MODEL_CPUS)
        embedder = self.settings.embedder
        if isinstance(embedder, LocalEmbedderConfig) and embedder.threads == 0:
            embedder = embedder.model_copy(update={"threads": MODEL_CPUS})
        return (
            ray.data.from_items(orders, override_num_blocks=len(orders))
            .flat_map(
                functools.partial(
                    _read_day,
                    settings=self.settings,
                    model_id=model_id,
                    include_title=include_title,
                    retry_failed=self.retry_failed,
                    log_level=log_level,
                ),
                num_cpus=READ_CPUS,
            )
            .map_batches(
                _ModelActor,
                fn_constructor_kwargs={
                    "config": embedder,
                    "export": self.settings.export,
                    "log_level": log_level,
                },
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool),
                num_cpus=MODEL_CPUS,
            )
        )

    async def _commit_output(self, dataset: ray.data.Dataset) -> None:
        loop = asyncio.get_running_loop()
        output = iter(dataset.iter_rows())
        # Waiting for Ray's next row happens off the event loop, which keeps renewing leases.
        waiting = ThreadPoolExecutor(1, thread_name_prefix="ray-output")
        try:
            while (row := await loop.run_in_executor(waiting, next, output, None)) is not None:
                item: _Embedded | _DayRead = _unpack(row)
                day = self.running.get(item.day)
                if day is None:
                    continue  # a later batch of a day that has failed already
                shard = item.shard
                day.arrived[(shard, item.sequence)] = item
                while (
                    ready := day.arrived.pop((shard, day.next_sequence.get(shard, 0)), None)
                ) is not None:
                    day.next_sequence[shard] = ready.sequence + 1
                    try:
                        await self._take(day, ready)
                    except Exception as error:
                        _log_if_unexpected(error)
                        self._finish(day, run_failure(error))
                    if day.run.record.finished:
                        break
        finally:
            # Not waiting: when the backfill is stopped, the thread may be waiting on Ray still.
            waiting.shutdown(wait=False, cancel_futures=True)

    async def _take(self, day: _Day, item: _Embedded | _DayRead) -> None:
        """Gather a batch, committing every `commit_rows` rows; at the end of the day's last
        shard, finish the day."""
        if isinstance(item, _DayRead):
            day.read[item.shard] = item.failure
            if len(day.read) < day.shards:
                return
            failures = [failure for _, failure in sorted(day.read.items()) if failure is not None]
            if not failures:
                day.gathering.end_day(day.run.record, self.settings.export.tenant_ids)
                await self._commit(day)
            # Also when reading failed midway: the batches read before are kept, as locally.
            elif day.gathering.sales:
                day.gathering.end_day(day.run.record, None)
                await self._commit(day)
            self._finish(day, failures[0] if failures else None)
            return
        if item.finished is None:
            # What was gathered is not committed: the local runner fails the same way.
            self._finish(day, item.failure)
            return
        day.gathering.add(item.finished, day.run.record)
        if day.gathering.rows >= self.settings.export.commit_rows:
            await self._commit(day)

    async def _commit(self, day: _Day) -> None:
        """Commit what the day's Gathering holds, on the table's thread."""
        committed = await asyncio.get_running_loop().run_in_executor(
            self.table_thread, day.gathering.commit, self.table
        )
        for record, counts in committed:
            if self.on_batch is not None:
                self.on_batch(
                    BatchDone(record.business_date, counts, self.days_done, self.days_total)
                )

    def _finish(self, day: _Day, failure: RunError | None) -> None:
        """Record the day's outcome and let go of it."""
        record = day.run.finish(failure)
        del self.running[record.business_date]
        self._day_done(record)

    def _day_done(self, record: RunRecord) -> None:
        self.days_done += 1
        if self.on_day is not None:
            self.on_day(DayDone(record, self.days_done, self.days_total))


# --- what runs on the cluster -------------------------------------------------------------------


def _read_day(
    row: dict[str, Any],
    *,
    settings: Settings,
    model_id: str,
    include_title: bool,
    retry_failed: bool,
    log_level: int,
) -> Iterator[dict[str, bytes]]:
    """A Ray task: read one day's sales (of a shard's tenants) in batches and fetch each
    batch's missing photos, over one connection pool for the task.

    Ends the shard's stream with a _DayRead, also when the source or the table fails midway.
    """
    order: _DayToRead = _unpack(row)
    configure_logging(logging.getLevelName(log_level))
    export = settings.export
    retries = RetryPolicy.of(settings.photos, retry_failed=retry_failed)
    steps = BatchSteps(export, model_id, include_title, retries)
    sequence = 0
    failure: RunError | None = None
    with (
        structlog.contextvars.bound_contextvars(
            run_id=order.run_id, day=order.day.isoformat(), shard=order.shard
        ),
        asyncio.Runner() as loop,
        contextlib.ExitStack() as cleanup,
    ):
        try:
            source = load_source(settings.source)
            cleanup.callback(source.close)
            table = SalesTable.open(settings.table, source=export.source_name, create=False)
            fetcher = loop.run(PhotoFetcher(settings.photos).__aenter__())
            cleanup.callback(lambda: loop.run(fetcher.__aexit__(None, None, None)))

            async def stored(
                keys: list[Key], sold_within: tuple[datetime, datetime] | None
            ) -> StoredRows:
                return table.stored(keys, sold_within=sold_within)

            window = business_day(order.day, export.timezone)
            batches = source.read(window, export.batch_size, list(order.tenant_ids))
            # Closed before the source, so a database cursor is not left to the collector.
            cleanup.callback(getattr(batches, "close", lambda: None))
            for batch in batches:
                parts = loop.run(_parts(steps, batch, stored, fetcher, order.started_at))
                for prepared in parts:
                    yield _pack(_Fetched(order.day, order.run_id, order.shard, sequence, prepared))
                    sequence += 1
        except Exception as error:
            _log_if_unexpected(error)
            failure = run_failure(error)
    yield _pack(_DayRead(order.day, order.shard, sequence, failure))


class _ModelActor:
    """An actor of the model pool: loads the embedder once, then finishes batch after batch."""

    def __init__(self, config: EmbedderConfig, export: ExportConfig, log_level: int) -> None:
        configure_logging(logging.getLevelName(log_level))
        self.embedder = load_embedder(config)
        self.steps = BatchSteps(export, self.embedder.model_id, self.embedder.include_title)

    def __call__(self, batch: dict[str, np.ndarray[Any, Any]]) -> dict[str, list[bytes]]:
        return {ITEM: [_pack_item(self._finish(_unpack_item(payload))) for payload in batch[ITEM]]}

    def _finish(self, item: _Fetched | _DayRead) -> _Embedded | _DayRead:
        if isinstance(item, _DayRead):
            return item
        with structlog.contextvars.bound_contextvars(run_id=item.run_id, day=item.day.isoformat()):
            try:
                finished = self.steps.finish(item.prepared, self.embedder, item.run_id)
            except Exception as error:
                _log_if_unexpected(error)
                return _Embedded(item.day, item.shard, item.sequence, None, run_failure(error))
        return _Embedded(item.day, item.shard, item.sequence, finished)


# --- small helpers -------------------------------------------------------------------------------


async def _parts(
    steps: BatchSteps,
    batch: SaleBatch,
    stored: StoredLookup,
    fetcher: PhotoFetcher,
    started_at: datetime,
) -> list[PreparedBatch]:
    """A batch's parts, all at once: a read task hands items to Ray between `loop.run` calls,
    each in a task of its own, and the fetcher's task group must end in the task it began in.
    So a read task holds a whole batch's photos, as the object store does anyway."""
    async with contextlib.aclosing(steps.prepare(batch, stored, fetcher, started_at)) as parts:
        return [part async for part in parts]


def _log_if_unexpected(error: Exception) -> None:
    """Log a bug's traceback where it happened: the committer records every failure, but
    only the process that raised it has the traceback."""
    if not isinstance(error, ExporterError):
        log.error("stage_failed", error=str(error), exc_info=True)


def _log_level() -> int:
    """The level this process logs at, for the workers to log at too: they start unconfigured."""
    bound = structlog.get_logger().bind()
    return int(getattr(bound, "get_effective_level", lambda: logging.INFO)())


def _pack(item: object) -> dict[str, bytes]:
    return {ITEM: _pack_item(item)}


def _pack_item(item: object) -> bytes:
    return pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)


def _unpack(row: dict[str, Any]) -> Any:
    return _unpack_item(row[ITEM])


def _unpack_item(payload: bytes) -> Any:
    # Only this module's own stages write these items, on the cluster the driver runs.
    return pickle.loads(payload)
