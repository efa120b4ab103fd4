"""What happens to one batch of sales, whichever runner drives it.

The local runner (`pipeline.py`) and the Ray backfill runner move batches differently (an
event loop and three threads on one machine; tasks and an actor pool on a cluster), but a batch
must come out the same either way: the same sales kept, the same photo failures recorded with
the same reasons, each distinct photo embedded once, and the same rows committed. So both call
the same three steps, and only decide where each runs:

    steps = BatchSteps(settings.export, embedder.model_id, embedder.include_title, retries)
    async for prepared in steps.prepare(batch, stored, fetcher, started_at):  # read side
        finished = steps.finish(prepared, embedder, run_id)   # model side: embed, diff
        gathering.add(finished, record)                       # committer: gathers parts,
    gathering.commit(table)                                   # then one snapshot of them
    gathering.end_day(record, tenant_ids)                     # after the day's last batch:
    gathering.commit(table)                                   # this commit records the day

Each step returns the errors it found instead of recording them, since it may run off the
thread (or in another process than) the one that owns the run record; the committer records
them in batch order, so a run's errors read the same from either runner. Which failed photos
are fetched again is decided here too (`photo_retries`, by the run's start), so both runners
defer the same ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

import pyarrow as pa
import structlog

from smartgo_exporter.config import ExportConfig
from smartgo_exporter.embedders import Embedder
from smartgo_exporter.errors import EmbeddingError, PhotoError
from smartgo_exporter.photo_fetcher import Photo, PhotoFetcher
from smartgo_exporter.photo_retries import RetryPolicy, failed_row
from smartgo_exporter.reuse import RecentEmbeddings, changed_rows, plan_batch
from smartgo_exporter.run_records import RunCounts, RunError, RunRecord
from smartgo_exporter.sales import Key, Sale, public_url
from smartgo_exporter.schema import (
    ARROW_SCHEMA,
    Embedding,
    EmbeddingStatus,
    SaleRow,
    StoredRows,
    rows_to_arrow,
)
from smartgo_exporter.sinks.iceberg import SalesTable
from smartgo_exporter.sinks.reconciliation import Reconciliation
from smartgo_exporter.sources import SaleBatch

log = structlog.get_logger(__name__)

StoredLookup = Callable[[list[Key], tuple[datetime, datetime] | None], Awaitable[StoredRows]]
"""`SalesTable.stored(keys, sold_within=...)`, run wherever the runner keeps the table."""


@dataclasses.dataclass(frozen=True)
class ReadKeys:
    """What a batch's rows say the source still has, for the day's reconciliation."""

    returned: frozenset[Key]
    """The keys of its valid sales, changed or not, whatever their photo; not the voided."""
    rejected_ids: frozenset[str]
    """The ids of its rejected rows; the position of one that had none, which can at worst
    keep a stored sale whose id happens to be that number."""


_NO_KEYS = ReadKeys(frozenset(), frozenset())
"""The read keys of a batch's later parts: its first part carries them all."""


@dataclasses.dataclass
class PreparedBatch:
    """A batch ready for the model: rows complete already, and sales with their photos."""

    settled: list[SaleRow]
    fetched: list[tuple[Sale, Photo]]
    stored: StoredRows
    counts: RunCounts
    errors: list[RunError]
    started_at: datetime
    """The run's start: the time its photo failures are recorded at."""
    read: ReadKeys


@dataclasses.dataclass
class FinishedBatch:
    """A batch ready to commit: the rows that differ from the table's (None when none do)."""

    rows: pa.Table | None
    counts: RunCounts
    errors: list[RunError]
    read: ReadKeys


@dataclasses.dataclass
class BatchSteps:
    """The steps of a batch, with what they need to know of the export and the model."""

    export: ExportConfig
    model_id: str
    include_title: bool
    retries: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    """Which failed photos `prepare` fetches again; `finish` does not need it."""
    recent: RecentEmbeddings = dataclasses.field(init=False)
    """Embeddings made earlier where these steps run. Where the two sides run in different
    processes (Ray), the read side knows none, so a photo seen earlier is fetched again, and
    the model side still embeds it only once."""

    def __post_init__(self) -> None:
        self.recent = RecentEmbeddings(include_title=self.include_title)

    async def prepare(
        self, batch: SaleBatch, stored: StoredLookup, fetcher: PhotoFetcher, started_at: datetime
    ) -> AsyncGenerator[PreparedBatch, None]:
        """Keep the batch's valid sales, look up what the table holds for them, and fetch the
        photos that neither the table nor this run has embedded already, but for failed ones
        not due again at `started_at` (the run's start).

        Yields the batch in parts of about `photos.part_bytes` of photos
        (`PhotoFetcher.fetch_parts`), each to be finished on its own: the first part carries
        the batch's counts, errors, read keys and the rows it settled without a photo; every
        part its photos, and the rows and errors of the photos that failed among them. Use it
        in `contextlib.aclosing`, so that its downloads stop when the caller does.
        """
        sales, counts, errors = select_sales(batch, self.export.tenant_ids)
        read = ReadKeys(
            frozenset(sale.key for sale in sales),
            frozenset(invalid.row for invalid in batch.rejected),
        )
        rows = await stored([sale.key for sale in sales], sold_within(sales))
        plan = plan_batch(
            sales,
            rows,
            self.model_id,
            counts,
            retries=self.retries,
            now=started_at,
            include_title=self.include_title,
        )
        to_fetch: list[Sale] = []
        for sale in plan.to_fetch:
            if (embedding := self.recent.get(sale)) is None:
                to_fetch.append(sale)
            else:
                # Embedded once already in this run, like a photo shared within a batch.
                plan.settled.append(SaleRow(sale, EmbeddingStatus.OK, embedding))
                counts.embedded += 1
        urls = sorted({sale.fetch_url for sale in to_fetch if sale.fetch_url})
        log.debug("photos_fetching", photos=len(urls))
        first: PreparedBatch | None = PreparedBatch(
            plan.settled, [], rows, counts, errors, started_at, read
        )
        done = 0
        async with contextlib.aclosing(fetcher.fetch_parts(urls)) as parts:
            async for part in parts:
                photos = dict(zip(urls[done : done + len(part)], part, strict=True))
                done += len(part)
                if first is None:
                    prepared = PreparedBatch([], [], rows, RunCounts(), [], started_at, _NO_KEYS)
                else:
                    prepared, first = first, None
                part_sales = [sale for sale in to_fetch if sale.fetch_url in photos]
                fetched, failed, photo_errors = sort_photos(
                    part_sales, photos, rows, started_at, prepared.counts
                )
                prepared.fetched = fetched
                prepared.settled += failed
                prepared.errors += photo_errors
                yield prepared
        if first is not None:
            yield first

    def finish(self, prepared: PreparedBatch, embedder: Embedder, run_id: str) -> FinishedBatch:
        """Embed the fetched photos and keep the rows that differ from the table's.

        Raises what the model raises when it fails the whole batch (ModelUnavailable): the run
        then fails, as it would on any runner.
        """
        log.debug("batch_embedding", photos=len(prepared.fetched))
        counts = prepared.counts
        reused: list[SaleRow] = []
        to_embed: list[tuple[Sale, Photo]] = []
        for sale, photo in prepared.fetched:
            known = self.recent.get(sale)
            if known is not None and known.image_sha256 == photo.sha256:
                reused.append(SaleRow(sale, EmbeddingStatus.OK, known))
                counts.embedded += 1
            else:
                to_embed.append((sale, photo))
        embedded, errors = embed_photos(
            embedder, to_embed, prepared.stored, prepared.started_at, counts
        )
        self.recent.remember(embedded)
        to_write = changed_rows(prepared.settled + reused + embedded, prepared.stored, counts)
        log.debug("batch_embedded", **dataclasses.asdict(counts))
        rows = (
            rows_to_arrow(
                to_write, source=self.export.source_name, run_id=run_id, exported_at=_now()
            )
            if to_write
            else None
        )
        return FinishedBatch(rows, counts, prepared.errors + errors, prepared.read)


@dataclasses.dataclass
class _DayGathered:
    """What a Gathering holds of one day's run."""

    record: RunRecord
    counts: RunCounts = dataclasses.field(default_factory=RunCounts)
    """Of its batches gathered since its last commit."""
    returned: set[Key] = dataclasses.field(default_factory=set)
    rejected_ids: set[str] = dataclasses.field(default_factory=set)
    ended: bool = False
    reconcile: Reconciliation | None = None


@dataclasses.dataclass
class Gathering:
    """Finished batches gathered for one commit: a commit per `commit_rows` rows keeps the
    files large and the snapshots few, while batches stay small enough to hold their photos.
    A commit may hold the rows of several days (a range of small days would otherwise pay a
    commit's fixed cost for each): a day's run is recorded by the commit that holds its end.

    It keeps every key a day's read returned, across that day's commits, for the reconciliation
    in its last one (`end_day`); a set of a day's keys is a few megabytes at most.
    """

    tables: list[pa.Table] = dataclasses.field(default_factory=list)
    rows: int = 0
    days: dict[str, _DayGathered] = dataclasses.field(default_factory=dict)
    """By run id, in the order the days came."""

    def add(self, finished: FinishedBatch, record: RunRecord) -> None:
        """Gather a batch of the run of `record`, recording its errors there."""
        for error in finished.errors:
            record.record_error(error)
        if finished.rows is not None:
            self.tables.append(finished.rows)
            self.rows += finished.rows.num_rows
        day = self._day(record)
        day.counts.add(finished.counts)
        day.returned |= finished.read.returned
        day.rejected_ids |= finished.read.rejected_ids

    def end_day(self, record: RunRecord, tenant_ids: Sequence[str] | None) -> None:
        """Say that the run of `record` has gathered its last batch: the next commit ends it.

        With `tenant_ids` (the day was read whole without failing), that commit also removes
        the rows of the day (of those tenants, or of every tenant when empty) that the read did
        not return, counted as `removed`. With None (the read failed or stopped early), what
        was read is kept and nothing is removed, since the sales not read may well be at the
        source still.
        """
        day = self._day(record)
        day.ended = True
        if tenant_ids is not None:
            day.reconcile = Reconciliation(
                record.window_start,
                record.window_end,
                tuple(tenant_ids),
                frozenset(day.returned),
                frozenset(day.rejected_ids),
            )

    @property
    def days_ended(self) -> int:
        return sum(day.ended for day in self.days.values())

    @property
    def sales(self) -> int:
        """Sales in the batches gathered since the last commit."""
        return sum(day.counts.sales for day in self.days.values())

    def commit(self, table: SalesTable) -> list[tuple[RunRecord, RunCounts]]:
        """Commit what was gathered (`take`, then `Commit.apply`), blocking."""
        return self.take().apply(table)

    def take(self) -> Commit:
        """What was gathered, as one commit to apply; gathering starts anew, keeping what it
        knows of the days not ended. Cheap: a runner takes a commit where it gathers, and
        applies it elsewhere while the next batches are gathered."""
        days = list(self.days.values())
        commit = Commit(
            self.tables,
            [(day.record, day.counts) for day in days],
            {day.record.run_id: day.reconcile for day in days if day.reconcile is not None},
            [day.record.run_id for day in days if day.ended],
        )
        for day in days:
            day.counts = RunCounts()
        self.tables, self.rows = [], 0
        self.days = {run_id: day for run_id, day in self.days.items() if not day.ended}
        return commit

    def _day(self, record: RunRecord) -> _DayGathered:
        day = self.days.get(record.run_id)
        if day is None:
            day = self.days[record.run_id] = _DayGathered(record)
        return day


@dataclasses.dataclass
class Commit:
    """Batches of one or several days' runs taken for one snapshot (`Gathering.take`)."""

    tables: list[pa.Table]
    runs: list[tuple[RunRecord, RunCounts]]
    """Each run with a batch or its end in the commit, and the counts of its batches."""
    reconcile: dict[str, Reconciliation]
    """By run id: the days read whole that this commit ends."""
    ended: list[str]
    """The run ids of the days this commit ends, `reconcile`'s and those read in part."""

    def apply(self, table: SalesTable) -> list[tuple[RunRecord, RunCounts]]:
        """Upsert the batches in one snapshot, with the reconciliations of the days ended, and
        add each run's counts to its record; returns each run's record and the counts
        committed for it. Blocking: the runner picks the thread."""
        if self.tables or self.reconcile:
            rows = last_per_key(self.tables) if self.tables else ARROW_SCHEMA.empty_table()
            removed = table.upsert_days(
                rows,
                run_ids=[record.run_id for record, _ in self.runs],
                business_date=max(record.business_date for record, _ in self.runs),
                reconcile=list(self.reconcile.values()),
            )
            by_run = dict(zip(self.reconcile, removed, strict=True))
            for record, counts in self.runs:
                counts.removed += by_run.get(record.run_id, 0)
        for record, counts in self.runs:
            record.counts.add(counts)
            # Named here, not left to the caller's context: a commit may hold several days.
            log.info(
                "batch_committed",
                run_id=record.run_id,
                day=record.business_date.isoformat(),
                **dataclasses.asdict(counts),
            )
        return self.runs


def _now() -> datetime:
    return datetime.now(UTC)


def select_sales(
    batch: SaleBatch, tenant_ids: Sequence[str]
) -> tuple[list[Sale], RunCounts, list[RunError]]:
    """The batch's valid sales, one per key (the source's later row wins), of the configured
    tenants only; with the batch's counts so far and the errors to record (rejected rows,
    duplicate sale ids, and the warnings of the tenants' sales written otherwise than given).
    Voided rows are counted, and are no error: the source says so."""
    allowed = set(tenant_ids)
    warnings = [w for w in batch.warnings if not allowed or w.tenant_id in allowed]
    counts = RunCounts(
        sales=len(batch.sales) + len(batch.rejected) + batch.voided,
        rejected=len(batch.rejected),
        normalised=len(warnings),
        voided=batch.voided,
    )
    errors = [
        RunError(invalid.row, "source", invalid.field, invalid.reason) for invalid in batch.rejected
    ]
    errors += [RunError(w.sale_id, "source", w.reason, w.detail) for w in warnings]
    by_key: dict[Key, Sale] = {}
    for sale in batch.sales:
        if allowed and sale.tenant_id not in allowed:
            log.warning("foreign_tenant_dropped", tenant_id=sale.tenant_id, sale_id=sale.sale_id)
            continue
        if sale.key in by_key:
            errors.append(
                RunError(sale.sale_id, "source", "duplicate_sale_id", "the later row was kept")
            )
        by_key[sale.key] = sale
    return list(by_key.values()), counts, errors


def sold_within(sales: Sequence[Sale]) -> tuple[datetime, datetime] | None:
    """The first and last `sold_at` of the sales: where the table keeps their stored rows."""
    if not sales:
        return None
    times = [sale.sold_at for sale in sales]
    return min(times), max(times)


def sort_photos(
    to_fetch: Sequence[Sale],
    photos: Mapping[str, Photo | PhotoError],
    stored: StoredRows,
    started_at: datetime,
    counts: RunCounts,
) -> tuple[list[tuple[Sale, Photo]], list[SaleRow], list[RunError]]:
    """Pair each sale with its fetched photo; a sale whose photo failed becomes a row with
    `failed:<reason>`, counted as one failure more than `stored` holds for it at `started_at`
    (`photo_retries.failed_row`), and an error naming its URL as the table keeps it
    (`public_url`)."""
    fetched: list[tuple[Sale, Photo]] = []
    failed: list[SaleRow] = []
    errors: list[RunError] = []
    for sale in to_fetch:
        photo = photos[str(sale.fetch_url)]
        if isinstance(photo, PhotoError):
            failed.append(failed_row(sale, photo.reason, stored, started_at))
            errors.append(RunError(sale.sale_id, "photo", photo.reason, _described(photo)))
            counts.failed += 1
        else:
            fetched.append((sale, photo))
    return fetched, failed, errors


def embed_photos(
    embedder: Embedder,
    fetched: Sequence[tuple[Sale, Photo]],
    stored: StoredRows,
    started_at: datetime,
    counts: RunCounts,
) -> tuple[list[SaleRow], list[RunError]]:
    """Embed each distinct photo once (several sales of one product share it), and return a
    row per sale with the errors of those the model refused (counted as failures as in
    `sort_photos`).

    It returns its errors rather than recording them, since it runs off the thread (or the
    process) that owns the run record.
    """

    def key(sale: Sale, photo: Photo) -> tuple[str, str | None]:
        # A model that embeds titles too sees one photo with two titles as two inputs.
        return (photo.sha256, sale.title if embedder.include_title else None)

    distinct: dict[tuple[str, str | None], Photo] = {}
    for sale, photo in fetched:
        distinct.setdefault(key(sale, photo), photo)
    inputs = list(distinct)
    counts.model_inputs += len(inputs)
    outputs = embedder.embed(
        [distinct[k].data for k in inputs], captions=[title for _, title in inputs]
    )
    vectors = dict(zip(inputs, outputs, strict=True))
    rows: list[SaleRow] = []
    errors: list[RunError] = []
    for sale, photo in fetched:
        vector = vectors[key(sale, photo)]
        if isinstance(vector, EmbeddingError):
            reason = f"embedding_{vector.reason}"
            rows.append(failed_row(sale, reason, stored, started_at))
            errors.append(RunError(sale.sale_id, "embedding", reason, vector.detail))
            counts.failed += 1
            continue
        embedding = Embedding(vector, embedder.model_id, photo.sha256, photo.width, photo.height)
        rows.append(SaleRow(sale, EmbeddingStatus.OK, embedding))
        counts.embedded += 1
    return rows, errors


def last_per_key(batches: Sequence[pa.Table]) -> pa.Table:
    """The batches as one table holding each (source, tenant_id, sale_id) once, its latest row.

    Batches gathered into one commit may repeat a key (a source that returns a sale twice, in
    rows far apart); an upsert given both rows would store both.
    """
    rows = pa.concat_tables(batches) if len(batches) > 1 else batches[0]
    if len(batches) == 1:
        return rows
    keys = list(
        zip(
            rows.column("source").to_pylist(),
            rows.column("tenant_id").to_pylist(),
            rows.column("sale_id").to_pylist(),
            strict=True,
        )
    )
    latest = {key: position for position, key in enumerate(keys)}
    if len(latest) == rows.num_rows:
        return rows
    return rows.take(sorted(latest.values()))


def _described(error: PhotoError) -> str:
    """The error for the run record, its URL in the form the table keeps (`public_url`)."""
    return f"{public_url(error.url)}: {error.reason}" + (
        f" ({error.detail})" if error.detail else ""
    )
