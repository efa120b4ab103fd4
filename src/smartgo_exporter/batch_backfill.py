"""A backfill at batch prices: its photos embedded by one Bedrock batch job, over invocations.

With `embedder.type = "titan"` and `embedder.batch = true`, `backfill` (the local runner) goes
through this module. Each call does what the range's batch record says is next, so a Lambda (or
a cron) calling the same backfill every hour or so carries it through:

1. No batch record of the range waiting: read the range's sales, look up what the table holds,
   fetch the photos still needing an embedding (as an export would, `BatchSteps.prepare`), and
   write each distinct one as a record of a new job (`titan_batch`); start the job and save a
   RUNNING record whose window is the whole range and whose `batch_job` names the job. Returns
   that record, its message "waiting for batch job <arn>". With fewer than MIN_RECORDS photos,
   Bedrock would refuse the job: the range is exported on demand at once instead, and a warning
   says so. The range's lease (`batch:<source>:<start>:<end>`) is held meanwhile: a second
   call arriving then is recorded FAILED as locked out, and starts no second job.
2. The job still running: saves Bedrock's status in the record, returns it, still waiting.
3. The job done: exports the range's days (`pipeline.export`, each day a run of its own) with a
   `BatchEmbedder` answering from the job's output; photos it lacks (a sale added since) are
   embedded on demand. Days exported since the job was started (SUCCEEDED, or PARTIAL for
   rejected rows) are not exported again. When every day is exported, the batch record is
   SUCCEEDED; when a day FAILED, or `should_stop` cut the export short (a Lambda's time
   budget), it stays RUNNING, and the next call exports the days left with the same job's
   vectors.
4. The job failed (Bedrock's Failed, Stopped, Expired, or output that cannot be read): the
   batch record is FAILED with Bedrock's message; the next call starts a new job.

Photos are fetched twice, once to write the records and once to export: the records hold the
photos as Titan receives them, not as the table's rows need them, and holding the range's
photos until the job is done would cost more than fetching them again. The nightly runs never
wait for a job: they embed on demand whatever this says.

    records = backfill_in_batch(settings, date(2026, 1, 1), date(2026, 3, 31))
    records[0].message  # "waiting for batch job arn:aws:bedrock:...:model-invocation-job/..."
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from typing import Any

import structlog

from smartgo_exporter.batches import BatchSteps
from smartgo_exporter.config import Settings, TitanEmbedderConfig
from smartgo_exporter.embedders.titan import TitanEmbedder
from smartgo_exporter.embedders.titan_batch import (
    MIN_RECORDS,
    BatchEmbedder,
    BatchJobs,
    JobInput,
)
from smartgo_exporter.errors import BatchJobError, ConfigError, ExporterError
from smartgo_exporter.photo_fetcher import PhotoFetcher
from smartgo_exporter.photo_retries import RetryPolicy
from smartgo_exporter.pipeline import STOPPED_EARLY, StopCheck, export
from smartgo_exporter.progress import NonFatalProgressStore, load_progress_store
from smartgo_exporter.run_records import BatchJob, RunError, RunRecord, RunStatus
from smartgo_exporter.runs import DayCallback, ProgressCallback, new_run_record
from smartgo_exporter.sales import Key
from smartgo_exporter.schema import StoredRows
from smartgo_exporter.sinks.iceberg import SalesTable
from smartgo_exporter.sources import load_source
from smartgo_exporter.windows import Window, business_day, days

log = structlog.get_logger(__name__)

WAITING = "waiting for batch job"


def backfill_in_batch(
    settings: Settings,
    start: date,
    end: date,
    *,
    trigger: str = "backfill",
    on_batch: ProgressCallback | None = None,
    on_day: DayCallback | None = None,
    retry_failed: bool = False,
    should_stop: StopCheck | None = None,
) -> list[RunRecord]:
    """Take the range's batch backfill one step on (see the module docstring); the records of
    this call: the batch record first, then those of the days it exported, if any.

    `should_stop` is `export`'s, for the days exported once the job is done (or on demand,
    when the range has too few photos for a job). ConfigError when the embedder is not Titan
    with `batch`; what `export` raises otherwise.
    """
    config = settings.embedder
    if not isinstance(config, TitanEmbedderConfig) or not config.batch:
        raise ConfigError("embedder.batch", "a batch backfill needs embedder type titan, batch")
    selected = list(days(start, end))
    window = _range_window(settings, start, end)
    store = NonFatalProgressStore.connect(
        lambda: load_progress_store(settings.progress, retention_days=settings.retention_days)
    )
    try:
        jobs = BatchJobs(config)
        record = waiting_record(store, window)
        if record is None:
            record = new_run_record(settings, window, trigger)
            started = _start(settings, config, selected, jobs, record, store, retry_failed)
            if started is None:
                return export(
                    settings,
                    selected,
                    trigger=trigger,
                    on_batch=on_batch,
                    on_day=on_day,
                    should_stop=should_stop,
                    retry_failed=retry_failed,
                )
            if started is record:
                return [started]
            record = started  # another call started the job meanwhile: carry that one on
        return _resume(
            settings,
            config,
            selected,
            jobs,
            record,
            store,
            on_batch,
            on_day,
            retry_failed,
            should_stop,
        )
    finally:
        store.close()


def _start(
    settings: Settings,
    config: TitanEmbedderConfig,
    selected: Sequence[date],
    jobs: BatchJobs,
    record: RunRecord,
    store: NonFatalProgressStore,
    retry_failed: bool,
) -> RunRecord | None:
    """Under the range's lease, start its job and save `record` naming it; None when there
    are too few photos for a job. Another call's record instead, when that call started the
    job between our look and our lease; `record` FAILED as locked out while it is starting it.
    """
    window = Window(record.business_date, record.window_start, record.window_end)
    lease = f"batch:{settings.export.source_name}:{selected[0]}:{selected[-1]}"
    ttl = settings.export.lease_seconds
    if not store.acquire_lease(lease, record.run_id, ttl):
        return _locked_out(record, store, lease)
    try:
        if (theirs := waiting_record(store, window)) is not None:
            return theirs
        renew = functools.partial(store.renew_lease, lease, record.run_id, ttl)
        if not _submit(settings, config, selected, jobs, record, retry_failed, renew):
            return None
        store.save(record)
        return record
    finally:
        store.release_lease(lease, record.run_id)


def waiting_record(store: NonFatalProgressStore, window: Window) -> RunRecord | None:
    """The latest RUNNING batch record of exactly this range, if any."""
    waiting = [
        record
        for record in store.runs_on(window.day)
        if record.batch_job is not None
        and record.status is RunStatus.RUNNING
        and record.window_start == window.start
        and record.window_end == window.end
    ]
    return max(waiting, key=lambda record: record.started_at, default=None)


def _locked_out(record: RunRecord, store: NonFatalProgressStore, lease: str) -> RunRecord:
    """The record of a call that found another one writing the range's job: it did nothing."""
    record.status = RunStatus.FAILED
    record.message = (
        f"another call is starting the range's batch job (it holds {lease}), so this one did"
        " nothing"
    )
    record.record_error(RunError("", "run", "locked", record.message))
    record.finished_at = datetime.now(UTC)
    log.error("batch_backfill_locked_out")
    store.save(record)
    return record


def _range_window(settings: Settings, start: date, end: date) -> Window:
    timezone = settings.export.timezone
    return Window(start, business_day(start, timezone).start, business_day(end, timezone).end)


def _submit(
    settings: Settings,
    config: TitanEmbedderConfig,
    selected: Sequence[date],
    jobs: BatchJobs,
    record: RunRecord,
    retry_failed: bool,
    renew: Callable[[], bool],
) -> bool:
    """Write the range's records and start its job, noting it in `record`; False (nothing
    started, nothing left in S3) when there are too few records for a job. `renew` keeps the
    range's lease while the photos are read."""
    last = selected[-1]
    name = f"sgx-{record.business_date:%Y%m%d}-{last:%Y%m%d}-{record.run_id.rsplit('-', 1)[-1]}"
    with jobs.records(name) as records:
        asyncio.run(_write_records(settings, config, selected, records, retry_failed, renew))
        if records.count < MIN_RECORDS:
            records.discard()
            log.warning(
                "batch_job_too_small_embedding_on_demand",
                photos=records.count,
                minimum=MIN_RECORDS,
                detail=f"Bedrock runs batch jobs of {MIN_RECORDS} records or more; these "
                f"{records.count} photos are embedded on demand, at the on-demand price",
            )
            return False
    arn = jobs.submit(records)
    record.batch_job = BatchJob(arn, "Submitted")
    record.message = f"{WAITING} {arn}"
    log.info("batch_backfill_waiting", job=arn, photos=records.count, days=len(selected))
    return True


async def _write_records(
    settings: Settings,
    config: TitanEmbedderConfig,
    selected: Sequence[date],
    records: JobInput,
    retry_failed: bool,
    renew: Callable[[], bool],
) -> None:
    """Read the days and fetch the photos an export would embed, a record for each; `renew`
    is called after each batch."""
    export_config = settings.export
    model = TitanEmbedder(config)
    steps = BatchSteps(
        export_config,
        model.model_id,
        model.include_title,
        RetryPolicy.of(settings.photos, retry_failed=retry_failed),
    )
    table = SalesTable.open(settings.table, source=export_config.source_name)
    source = load_source(settings.source)
    # One thread for the source and the table: drivers and SQLite stay on the thread they began on.
    thread = ThreadPoolExecutor(1, thread_name_prefix="batch-survey")
    loop = asyncio.get_running_loop()

    def on_thread(function: Any, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        return loop.run_in_executor(thread, functools.partial(function, *args, **kwargs))

    async def stored(keys: list[Key], within: tuple[datetime, datetime] | None) -> StoredRows:
        rows: StoredRows = await on_thread(table.stored, keys, sold_within=within)
        return rows

    started_at = datetime.now(UTC)
    try:
        async with PhotoFetcher(settings.photos) as fetcher:
            for day in selected:
                window = business_day(day, export_config.timezone)
                batches = source.read(window, export_config.batch_size, export_config.tenant_ids)
                try:
                    while (batch := await on_thread(next, batches, None)) is not None:
                        parts = steps.prepare(batch, stored, fetcher, started_at)
                        async with contextlib.aclosing(parts):
                            async for prepared in parts:
                                for sale, photo in prepared.fetched:
                                    records.add(photo.data, sale.title)
                        await on_thread(renew)
                finally:
                    close = getattr(batches, "close", None)
                    if close is not None:
                        await on_thread(close)
    finally:
        await on_thread(source.close)
        thread.shutdown(wait=True)


def _resume(
    settings: Settings,
    config: TitanEmbedderConfig,
    selected: Sequence[date],
    jobs: BatchJobs,
    record: RunRecord,
    store: NonFatalProgressStore,
    on_batch: ProgressCallback | None,
    on_day: DayCallback | None,
    retry_failed: bool,
    should_stop: StopCheck | None,
) -> list[RunRecord]:
    """Poll the record's job, and once it is done export the range's days left with its
    vectors."""
    job = record.batch_job
    assert job is not None
    try:
        poll = jobs.poll(job.job_arn)
        job.status = poll.status
        if poll.state == "pending":
            record.message = f"{WAITING} {job.job_arn} ({poll.status})"
            store.save(record)
            return [record]
        if poll.state == "failed":
            raise BatchJobError(job.job_arn, f"{poll.status}: {poll.message or 'no message'}")
        embedder = BatchEmbedder(jobs.vectors(job.job_arn), TitanEmbedder(config))
    except ExporterError as error:
        record.status = RunStatus.FAILED
        record.message = str(error)
        record.record_error(RunError("", "embedding", "batch_job_failed", str(error)))
        record.finished_at = datetime.now(UTC)
        log.error("batch_job_failed", job=job.job_arn, error=str(error))
        store.save(record)
        return [record]
    left = [day for day in selected if not _exported_since(store, day, record.started_at)]
    exported = export(
        settings,
        left,
        trigger=record.trigger,
        on_batch=on_batch,
        on_day=on_day,
        should_stop=should_stop,
        embedder=embedder,
        retry_failed=retry_failed,
    )
    summary = (
        f"batch job {job.job_arn} {poll.status}: {embedder.from_job} photos embedded by the "
        f"job, {embedder.on_demand} on demand"
    )
    cut = len(exported) < len(left) or any(day.message == STOPPED_EARLY for day in exported)
    if any(day.status is RunStatus.FAILED for day in exported):
        record.message = f"{summary}; a day FAILED, the next backfill exports the days left"
    elif cut:
        record.message = f"{summary}; stopped for time, the next backfill exports the days left"
    else:
        record.status = RunStatus.SUCCEEDED
        record.message = summary
        record.finished_at = datetime.now(UTC)
        log.info("batch_backfill_done", job=job.job_arn, detail=summary)
    store.save(record)
    return [record, *exported]


def _exported_since(store: NonFatalProgressStore, day: date, since: datetime) -> bool:
    """Whether a run started after `since` exported `day`: SUCCEEDED, or PARTIAL for rows
    it rejected, not for lack of time."""
    return any(
        run.batch_job is None
        and run.started_at > since
        and (
            run.status is RunStatus.SUCCEEDED
            or (run.status is RunStatus.PARTIAL and run.message != STOPPED_EARLY)
        )
        for run in store.runs_on(day)
    )
