"""The Iceberg table: its creation, key lookups and the idempotent upsert.

Every write is an upsert on (source, tenant_id, sale_id) committed as ONE overwrite snapshot:
the data files holding any of the batch's keys are rewritten without those rows, and the batch
is added, in the same commit. A re-run therefore replaces rows instead of adding them, a crash
before the commit leaves the table as it was, and a reader never sees a half-applied batch.
The snapshot's summary carries the run id, so the table itself says which run wrote what.

The last commit of a day read completely also removes, in its snapshot, the day's rows the
source no longer returns (`sinks.reconciliation`).

The catalog that holds the table is opened by `sinks.catalog`; the predicates that find a
batch's keys in it are `sinks.key_filters`, and the files a commit rewrites are planned by
`sinks.rewrites`.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy.exc
import structlog
from pyiceberg.exceptions import (
    CommitFailedException,
    CommitStateUnknownException,
    NoSuchNamespaceError,
    NoSuchTableError,
    ServerError,
    ServiceUnavailableError,
    ValidationException,
)
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.table import Table
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import IdentityTransform, MonthTransform

from smartgo_exporter.config import TableConfig
from smartgo_exporter.errors import ExporterError, SinkError
from smartgo_exporter.sales import Key
from smartgo_exporter.schema import ARROW_SCHEMA, ICEBERG_SCHEMA, StoredRows
from smartgo_exporter.sinks.catalog import open_catalog, redact
from smartgo_exporter.sinks.data_files import write_data_files
from smartgo_exporter.sinks.file_cache import FileCache
from smartgo_exporter.sinks.file_plans import FilePlans
from smartgo_exporter.sinks.key_filters import key_filter, key_mask, sold_within_filter
from smartgo_exporter.sinks.reconciliation import Reconciliation
from smartgo_exporter.sinks.rewrites import plan_rewrites

log = structlog.get_logger(__name__)

RUN_ID_PROPERTY = "smartgo.run-id"
"""Snapshot summary property naming the export runs that committed the snapshot, comma-separated
(one for each day whose rows or reconciliation it holds)."""
BUSINESS_DATE_PROPERTY = "smartgo.business-date"
"""Snapshot summary property: the business day (ISO date) whose sales the snapshot holds."""
SOURCE_PROPERTY = "smartgo.source"
"""Snapshot summary property: the `source` of the rows, since exporters may share a table."""

LOOKUP_CACHE_BYTES = 128 * 1024 * 1024
"""Decoded small data files kept for the next lookups (`sinks.file_cache`)."""
LOOKUP_REFRESH_SECONDS = 1.0
"""How long lookups go on from the table state they last loaded from the catalog. A reload is a
catalog round trip and a parse of metadata that grows with the snapshots kept (8 ms a lookup at
100 snapshots, half a 10,000-sale day's lookups), while this writer's own commits are seen at
once. Another writer's commit of the last second that a lookup misses costs at most a row
written again, or a photo embedded again: the commit finds every stored row of its keys anew."""

PARTITION_SPEC = PartitionSpec(
    PartitionField(source_id=2, field_id=1000, transform=IdentityTransform(), name="tenant_id"),
    # month() carries the year; Iceberg refuses year() and month() on one column.
    PartitionField(source_id=4, field_id=1001, transform=MonthTransform(), name="sold_at_month"),
)
SORT_ORDER = SortOrder(SortField(source_id=4, transform=IdentityTransform()))
TABLE_PROPERTIES = {
    "format-version": "2",
    "write.parquet.compression-codec": "zstd",
}


def create_table(config: TableConfig) -> Table:
    """The sales table, created with its partition spec and sort order if it is missing.

    Idempotent: an existing table is loaded and only gains the columns this version writes and
    it lacks (new columns are nullable; no data file is rewritten). Deployment runs it once
    (`smartgo-exporter create-table`), and each export runs it again, so an export needs the
    create permissions only when the table really is missing.
    """
    catalog = open_catalog(config)
    identifier = (config.namespace, config.name)
    table: Table | None = None
    with (
        _table_errors(identifier, "open", config.catalog),
        contextlib.suppress(NoSuchTableError, NoSuchNamespaceError),
    ):
        table = catalog.load_table(identifier)
    if table is None:
        with _table_errors(identifier, "create", config.catalog):
            catalog.create_namespace_if_not_exists(config.namespace)
            table = catalog.create_table_if_not_exists(
                identifier,
                schema=ICEBERG_SCHEMA,
                partition_spec=PARTITION_SPEC,
                sort_order=SORT_ORDER,
                properties=TABLE_PROPERTIES,
            )
    with _table_errors(identifier, "add new columns to", config.catalog):
        return add_missing_columns(table)


@contextlib.contextmanager
def _table_errors(
    identifier: tuple[str, str], verb: str, properties: dict[str, str]
) -> Iterator[None]:
    name = ".".join(identifier)
    try:
        yield
    except NoSuchTableError:
        raise SinkError(
            f"table {name} does not exist; the first export creates it, or run"
            " smartgo-exporter create-table"
        ) from None
    except ExporterError:
        raise
    except Exception as error:
        raise SinkError(f"cannot {verb} table {name}: {redact(error, properties)}") from error


def load_table(config: TableConfig) -> Table:
    """The existing table; SinkError naming it when it is missing or its catalog fails."""
    catalog = open_catalog(config)
    identifier = (config.namespace, config.name)
    with _table_errors(identifier, "open", config.catalog):
        return catalog.load_table(identifier)


class SalesTable:
    """The sales table of one source: what the pipeline reads keys from and upserts into."""

    def __init__(
        self,
        table: Table,
        *,
        source: str,
        commit_attempts: int = 4,
        lookup_refresh_seconds: float = LOOKUP_REFRESH_SECONDS,
    ) -> None:
        self.table = table
        self.source = source
        self.commit_attempts = commit_attempts
        self.lookup_refresh_seconds = lookup_refresh_seconds
        self._loaded_at = time.monotonic()
        self._plans = FilePlans(source)
        self._files = FileCache(LOOKUP_CACHE_BYTES)

    @classmethod
    def open(cls, config: TableConfig, *, source: str, create: bool = True) -> SalesTable:
        """Load the table, creating namespace and table (or adding new columns) as needed."""
        table = create_table(config) if create else load_table(config)
        return cls(table, source=source, commit_attempts=config.commit_attempts)

    def stored(
        self, keys: Iterable[Key], *, sold_within: tuple[datetime, datetime] | None = None
    ) -> StoredRows:
        """The rows already in the table for these keys (at most one each).

        `sold_within` (the batch's first and last `sold_at`) narrows the search to the files
        whose sales fall in that span: without it, a lookup reads every file that may hold
        the keys, which for ids that do not sort with time (plain integers, as text) is every
        file of the tenant, so each batch would cost more as the table grows. A sale whose
        `sold_at` moved out of the span at the source is then not found: it is written again
        (and `upsert` still replaces its old row, which it finds by key alone) and its photo
        is embedded again; nothing is lost or duplicated.

        It sees this writer's commits at once, another writer's within
        `lookup_refresh_seconds` (see `LOOKUP_REFRESH_SECONDS`). A catalog or warehouse that
        cannot be read raises SinkError naming the table.
        """
        keys = list(keys)
        if not keys or self.table.current_snapshot() is None:
            return StoredRows(ARROW_SCHEMA.empty_table(), {})
        if sold_within is None:
            row_filter = key_filter(self.source, keys)
        else:
            # The span alone prunes the files; the keys are then picked out with Arrow. Given
            # to pyiceberg as well, the key set would be bound against every manifest's
            # partitions, which cost more than all the rest of a lookup.
            first, last = sold_within
            row_filter = sold_within_filter(self.source, keys, first, last)
        try:
            if time.monotonic() - self._loaded_at >= self.lookup_refresh_seconds:
                self.table.refresh()
                self._loaded_at = time.monotonic()
            if sold_within is None:
                found = self.table.scan(row_filter=row_filter).to_arrow()
            else:
                files = self._plans.files_within(self.table, keys, *sold_within)
                found = self._files.read(self.table, files, row_filter)
        except UNREACHABLE as error:
            raise SinkError(
                f"cannot read table {'.'.join(self.table.name())}: {first_line(error)}"
            ) from error
        if sold_within is not None:
            # Small files come whole from the cache: the span is applied here as to the rest.
            sold_at, (first, last) = found.column("sold_at"), sold_within
            within = pc.and_(
                pc.greater_equal(sold_at, pa.scalar(first, sold_at.type)),
                pc.less_equal(sold_at, pa.scalar(last, sold_at.type)),
            )
            found = found.filter(pc.and_(within, key_mask(found, self.source, keys)))
        index = {
            (tenant, sale): position
            for position, (tenant, sale) in enumerate(
                zip(
                    found.column("tenant_id").to_pylist(),
                    found.column("sale_id").to_pylist(),
                    strict=True,
                )
            )
        }
        return StoredRows(found, index)

    def upsert(
        self,
        rows: pa.Table,
        *,
        run_id: str,
        business_date: date | None = None,
        reconcile: Reconciliation | None = None,
    ) -> int:
        """Replace any stored rows with these rows' keys by these rows, in one snapshot; with
        `reconcile`, also remove in it the window's rows the read did not return (see
        `sinks.reconciliation`). Returns how many rows that removed. `upsert_days` is the
        same for the rows of several days' runs.
        """
        return sum(
            self.upsert_days(
                rows,
                run_ids=(run_id,),
                business_date=business_date,
                reconcile=() if reconcile is None else (reconcile,),
            )
        )

    def upsert_days(
        self,
        rows: pa.Table,
        *,
        run_ids: Sequence[str],
        business_date: date | None = None,
        reconcile: Sequence[Reconciliation] = (),
    ) -> list[int]:
        """Replace any stored rows with these rows' keys by these rows, and remove the rows
        each of `reconcile` finds gone, all in one snapshot; returns how many rows each of
        `reconcile` removed. A range of small days is committed so, not a snapshot a day: a
        commit's cost is mostly fixed (planning, manifests, the catalog's round trip).

        The snapshot's summary names `run_ids` (comma-separated), this table's source and,
        when given, `business_date`, the latest day whose sales the rows are (see
        `last_exported_day`). With no rows and nothing to remove, nothing is committed.

        A concurrent commit that added data files, or removed one this commit rewrites, makes
        ours fail validation, whatever its keys; the rows are then re-planned against the new
        table state and committed again, up to `commit_attempts` times, so neither writer's
        rows are lost or duplicated.
        """
        if rows.num_rows == 0 and not reconcile:
            return []
        rows = rows.cast(ARROW_SCHEMA).sort_by(
            [("tenant_id", "ascending"), ("sold_at", "ascending")]
        )
        keys = list(
            zip(
                rows.column("tenant_id").to_pylist(),
                rows.column("sale_id").to_pylist(),
                strict=True,
            )
        )
        attempt = 0
        while True:
            attempt += 1
            try:
                if attempt > 1:
                    self.table.refresh()
                properties = self._snapshot_properties(run_ids, business_date)
                return self._commit(rows, keys, properties, reconcile)
            # pyiceberg retries a bare catalog conflict itself; it raises ValidationException when
            # the other writer added or removed data files, and then only re-planning from the
            # new state (which rows to rewrite) is right. A catalog or warehouse that cannot be
            # reached (connection refused or dropped, an I/O error) may well answer the next
            # attempt; and redoing a commit whose outcome is unknown is safe, since it replaces
            # the same keys and removes what is still gone (if the first landed, the count
            # removed then says 0). Until the commit lands, the table shows none of the rows.
            except _RETRIED_AT_COMMIT as error:
                if attempt >= self.commit_attempts:
                    raise SinkError(
                        f"cannot commit {rows.num_rows} rows to table"
                        f" {'.'.join(self.table.name())}: {attempt} attempts failed, the last"
                        f" because: {first_line(error)}"
                    ) from error
                conflict = isinstance(error, (CommitFailedException, ValidationException))
                log.warning(
                    "commit_conflict" if conflict else "commit_failed",
                    attempt=attempt,
                    error=first_line(error),
                )
                time.sleep(min(0.2 * 2**attempt, 5.0))

    def query(self, statement: str) -> pa.Table:
        """Run DuckDB SQL over the table, visible as `sales`.

        The scan streams into DuckDB, which reads a stream once; a statement that reads `sales`
        twice (a self-join, such as the sales most like one sale) gets the table in memory.
        """
        # Imported here: only `sql` needs DuckDB, and every export and Lambda cold start would
        # otherwise pay for loading it.
        import duckdb

        def run(sales: pa.RecordBatchReader | pa.Table) -> pa.Table:
            connection = duckdb.connect()
            try:
                connection.register("sales", sales)
                result: pa.Table = connection.sql(statement).to_arrow_table()
                return result
            finally:
                connection.close()

        try:
            try:
                return run(self.table.scan().to_arrow_batch_reader())
            except duckdb.InvalidInputException as error:
                if "already been consumed" not in str(error):
                    raise
                return run(self.table.scan().to_arrow())
        except duckdb.Error as error:
            raise SinkError(f"query failed: {error}") from None

    def last_exported_day(self) -> date | None:
        """The latest business day this source committed rows for, from the snapshot summaries.

        The table's own memory of progress, for when the progress store has none: it says a
        day's rows were (at least partly) written, not that its run completed.
        """
        days: list[date] = []
        for snapshot in self.table.metadata.snapshots:
            summary = snapshot.summary
            if summary is None or summary.get(SOURCE_PROPERTY) != self.source:
                continue
            with contextlib.suppress(TypeError, ValueError):
                days.append(date.fromisoformat(summary.get(BUSINESS_DATE_PROPERTY) or ""))
        return max(days, default=None)

    def _snapshot_properties(
        self, run_ids: Sequence[str], business_date: date | None
    ) -> dict[str, str]:
        properties = {RUN_ID_PROPERTY: ",".join(run_ids), SOURCE_PROPERTY: self.source}
        if business_date is not None:
            properties[BUSINESS_DATE_PROPERTY] = business_date.isoformat()
        return properties

    def _commit(
        self,
        rows: pa.Table,
        keys: Sequence[Key],
        properties: dict[str, str],
        reconcile: Sequence[Reconciliation],
    ) -> list[int]:
        plan = plan_rewrites(self.table, self.source, keys, reconcile, self._files, self._plans)
        if rows.num_rows == 0 and not plan.files:
            return plan.removed  # nothing to write and nothing gone: no empty snapshot
        transaction = self.table.transaction()
        metadata = transaction.table_metadata
        commit_uuid = uuid.uuid4()
        counter = itertools.count(0)
        with transaction.update_snapshot(snapshot_properties=properties).overwrite(
            commit_uuid=commit_uuid
        ) as snapshot:
            # No predicate is given: pyiceberg then reads only the manifests of the deleted
            # files' partitions, where a predicate of our keys (which names no month) had it
            # read every manifest of our tenants twice, a second a commit at 10M rows. And with
            # none, any data file a concurrent writer added fails validation, so the loop in
            # `upsert_days` re-plans from the new state (finding a key wherever it now is),
            # which a predicate of our partitions could not promise for a sale that moved.
            for rewrite in plan.files:
                snapshot.delete_data_file(rewrite.task.file)
                if rewrite.kept.num_rows:
                    for data_file in write_data_files(
                        metadata, rewrite.kept, self.table.io, commit_uuid, counter
                    ):
                        snapshot.append_data_file(data_file)
            if rows.num_rows:
                for data_file in write_data_files(
                    metadata, rows, self.table.io, commit_uuid, counter
                ):
                    snapshot.append_data_file(data_file)
        transaction.commit_transaction()
        return plan.removed


UNREACHABLE = (
    CommitStateUnknownException,
    ServerError,
    ServiceUnavailableError,
    OSError,  # the warehouse's files; and requests' errors are OSErrors: the REST catalogs'
    sqlalchemy.exc.OperationalError,  # the SQL catalog's database: unreachable, locked
)
"""A catalog or warehouse that did not answer, or not in time: the next try may pass."""
_RETRIED_AT_COMMIT = (CommitFailedException, ValidationException, *UNREACHABLE)
"""What may pass by the next attempt of a commit; anything else is a bug or a bad table."""


def first_line(error: Exception) -> str:
    """The error's own words, without SQLAlchemy's trailing "(Background on this error...)"."""
    text = str(error).split("\n(Background on this error", 1)[0]
    return " ".join(text.split()) or type(error).__name__


SCHEMA_UPDATE_ATTEMPTS = 4
"""Tries at adding missing columns: each lost race leaves fewer (most often none) to add."""


def add_missing_columns(table: Table) -> Table:
    """Add columns this version writes that an older table lacks; data files are not rewritten.

    Two runs of a new version may open an older table at once: both find the columns missing,
    and the second to commit fails its check that the schema is still the one it read
    (CommitFailedException). It then reads the table again, and adds what is still missing,
    which is nothing when the other run added the same columns.
    """
    attempt = 1
    while True:
        present = {field.name for field in table.schema().fields}
        if {field.name for field in ICEBERG_SCHEMA.fields} <= present:
            return table
        try:
            with table.update_schema() as update:
                update.union_by_name(ICEBERG_SCHEMA)
            return table
        except CommitFailedException as error:
            if attempt >= SCHEMA_UPDATE_ATTEMPTS:
                raise
            log.warning("schema_update_conflict", attempt=attempt, error=first_line(error))
            table.refresh()
            attempt += 1
