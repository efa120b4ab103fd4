"""Compaction of the sales table: small data files rewritten into few, old snapshots expired.

Every export batch is one overwrite snapshot with a file or a few per partition, so nightly
exports leave each partition (one tenant's month) with dozens of small files and the table with
thousands of snapshots: every scan opens every file, and the metadata grows with every commit.
`compact` rewrites each partition's small files into few files of a target size, as ONE
overwrite snapshot per partition whose rows are exactly the rows it replaces, then expires the
snapshots older than a retention.

pyiceberg 0.12 has no data-file rewrite (Java's `rewrite_data_files`) and no orphan-file
removal. The rewrite is therefore its overwrite snapshot, as the exporter's upsert commits:
delete the small files, append the new ones. Expiry is its
`table.maintenance.expire_snapshots()`, which removes snapshots from the metadata and deletes no
file; the files no snapshot references any more are counted and left on storage.

An export committing to the same partition meanwhile loses nothing: the overwrite's conflict
check is scoped to the partition, so pyiceberg fails it when another commit added or deleted
files there since the rewrite was planned. The partition is then planned again from the new
state, and after `TableConfig.commit_attempts` such conflicts left as it is, for the next
compaction. S3 Tables compacts its tables and expires their snapshots itself, so a catalog of
type "s3tables" is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from functools import reduce
from typing import Any, Literal, cast

import pyarrow as pa
import structlog
from pyiceberg.exceptions import (
    CommitFailedException,
    ValidationException,
)
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    LessThan,
)
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.manifest import DataFile
from pyiceberg.table import FileScanTask, Table, TableProperties
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.transforms import IdentityTransform, MonthTransform
from pyiceberg.typedef import Record
from pyiceberg.utils.bin_packing import ListPacker

from smartgo_exporter.config import TableConfig
from smartgo_exporter.errors import ConfigError, SinkError
from smartgo_exporter.sinks.data_files import write_data_files
from smartgo_exporter.sinks.iceberg import (
    BUSINESS_DATE_PROPERTY,
    SOURCE_PROPERTY,
    UNREACHABLE,
    first_line,
    load_table,
)

log = structlog.get_logger(__name__)

# pyiceberg's predicates are pydantic models whose generated signatures mypy's pydantic plugin
# misreads; these aliases keep the documented positional form type-checked.
_Predicate = Callable[[str, Any], BooleanExpression]
_equal_to = cast(_Predicate, EqualTo)
_at_least = cast(_Predicate, GreaterThanOrEqual)
_before = cast(_Predicate, LessThan)

MIB = 1024 * 1024
DEFAULT_TARGET_FILE_BYTES = 128 * MIB
"""Iceberg's usual target for a data file: large enough for few opens per scan."""
DEFAULT_KEEP_DAYS = 7
"""How long a snapshot stays readable (time travel, a reader's scan in progress)."""
LARGE_ENOUGH = 0.75
"""A file at least this share of the target is left as it is: rewriting it would gain little."""
COMPACTION_PROPERTY = "smartgo.compaction"
"""Snapshot summary property marking a compaction's snapshot (which has no run id)."""


@dataclasses.dataclass(frozen=True)
class PartitionCompaction:
    """One partition's rewrite: the small files it replaced and the files that replaced them."""

    partition: str
    """As Iceberg names it in paths: tenant_id=ams-jordaan/sold_at_month=2026-11."""
    files_before: int
    files_after: int
    bytes_before: int
    bytes_after: int
    rows: int
    attempts: int
    """Commits tried: more than 1 when a concurrent commit to the partition made one fail."""


@dataclasses.dataclass(frozen=True)
class CompactionReport:
    """What `compact` did to the table, for a person to read (the CLI prints it)."""

    table: str
    target_file_bytes: int
    keep_days: int
    compacted: list[PartitionCompaction]
    already_compact: int
    """Selected partitions with nothing worth rewriting (no two small files to merge)."""
    skipped: list[str]
    """Partitions left as they were: concurrent commits failed every attempt to rewrite them."""
    snapshots_expired: int
    snapshots_kept: int
    unreferenced_files: int
    """Data files that no snapshot references after the expiry; they stay on storage, since
    pyiceberg 0.12 deletes no files (an engine's orphan-file removal can)."""
    unreferenced_bytes: int


def compact(
    config: TableConfig,
    *,
    tenant: str | None = None,
    month: date | None = None,
    target_file_bytes: int = DEFAULT_TARGET_FILE_BYTES,
    keep_days: int = DEFAULT_KEEP_DAYS,
    now: datetime | None = None,
) -> CompactionReport:
    """Rewrite the small files of every partition (or of `tenant`'s, of `month`'s) into files
    of about `target_file_bytes`, then expire snapshots older than `keep_days` before `now`.

    Each partition is one overwrite snapshot holding exactly its rows before. Files of at least
    3/4 of the target are left alone, and so are files with delete files (another engine's
    merge-on-read deletes; this exporter writes none). Expiry always keeps the current
    snapshot, and for each source the snapshot naming its latest business day, which the
    exporter reads to catch up when its progress store knows of no run (see
    `SalesTable.last_exported_day`). The filters apply to the rewrite only; expiry is table-wide.

    Raises ConfigError for an "s3tables" catalog, SinkError when the table is missing or the
    catalog or warehouse fails; a partition that concurrent commits keep changing is skipped
    and reported, not raised.
    """
    if target_file_bytes < 1 or keep_days < 0:
        raise ValueError("target_file_bytes must be positive and keep_days not negative")
    _refuse_self_compacting(config)
    name = f"{config.namespace}.{config.name}"
    with _sink_errors(name):
        table = load_table(config)
        compacted: list[PartitionCompaction] = []
        skipped: list[str] = []
        partitions = _partitions(table, _selection(tenant, month))
        for partition in partitions:
            outcome = _compact_partition(
                table, partition, target_file_bytes, config.commit_attempts
            )
            if isinstance(outcome, PartitionCompaction):
                compacted.append(outcome)
            elif outcome == "skipped":
                skipped.append(partition.name)
        cutoff = (now or datetime.now(UTC)) - timedelta(days=keep_days)
        expired, unreferenced = _expire_snapshots(table, cutoff, config.commit_attempts)
    return CompactionReport(
        table=name,
        target_file_bytes=target_file_bytes,
        keep_days=keep_days,
        compacted=compacted,
        already_compact=len(partitions) - len(compacted) - len(skipped),
        skipped=skipped,
        snapshots_expired=expired,
        snapshots_kept=len(table.metadata.snapshots),
        unreferenced_files=len(unreferenced),
        unreferenced_bytes=sum(unreferenced.values()),
    )


def _refuse_self_compacting(config: TableConfig) -> None:
    """S3 Tables rewrites and expires on its own schedule; a second compactor would only race it."""
    if config.catalog.get("type") == "s3tables":
        raise ConfigError(
            "table.catalog.type",
            "S3 Tables compacts its tables and expires their snapshots itself (set it up on"
            " the table bucket); compact is for the other catalog types",
        )


@contextlib.contextmanager
def _sink_errors(name: str) -> Iterator[None]:
    try:
        yield
    except UNREACHABLE as error:
        raise SinkError(f"cannot compact table {name}: {first_line(error)}") from error


@dataclasses.dataclass(frozen=True)
class _Partition:
    spec_id: int
    values: Record
    name: str
    row_filter: BooleanExpression
    """The partition's rows, in columns: it scopes planning and pyiceberg's conflict check."""

    def files(self, table: Table) -> list[FileScanTask]:
        return [
            task
            for task in table.scan(row_filter=self.row_filter).plan_files()
            if task.file.spec_id == self.spec_id and task.file.partition == self.values
        ]


def _selection(tenant: str | None, month: date | None) -> BooleanExpression:
    terms: list[BooleanExpression] = []
    if tenant is not None:
        terms.append(_equal_to("tenant_id", tenant))
    if month is not None:
        terms.append(_month_of("sold_at", (month.year - 1970) * 12 + month.month - 1))
    return _all_of(terms)


def _all_of(terms: list[BooleanExpression]) -> BooleanExpression:
    both: Callable[[BooleanExpression, BooleanExpression], BooleanExpression] = And
    everything: BooleanExpression = AlwaysTrue()
    return reduce(both, terms, everything)


def _month_of(column: str, months_since_1970: int) -> BooleanExpression:
    """The rows whose `column` falls in the month Iceberg's month transform numbers so."""
    year, month = divmod(months_since_1970, 12)
    first = datetime(1970 + year, month + 1, 1, tzinfo=UTC)
    following = datetime(first.year + first.month // 12, first.month % 12 + 1, 1, tzinfo=UTC)
    return And(_at_least(column, first), _before(column, following))


def _partitions(table: Table, selection: BooleanExpression) -> list[_Partition]:
    """The partitions holding data files that `selection` may match, by name."""
    if table.current_snapshot() is None:
        return []
    schema = table.schema()
    found: dict[tuple[int, Record], _Partition] = {}
    for task in table.scan(row_filter=selection).plan_files():
        key = (task.file.spec_id, task.file.partition)
        if key in found:
            continue
        spec = table.specs()[task.file.spec_id]
        terms: list[BooleanExpression] = []
        for position, field in enumerate(spec.fields):
            value = task.file.partition[position]
            column = schema.find_column_name(field.source_id)
            if column is None:
                continue
            if isinstance(field.transform, IdentityTransform):
                terms.append(_equal_to(column, value))
            elif isinstance(field.transform, MonthTransform):
                terms.append(_month_of(column, value))
            # Any other transform adds no term: a wider filter only widens the conflict check.
        found[key] = _Partition(
            spec_id=key[0],
            values=key[1],
            name=spec.partition_to_path(task.file.partition, schema),
            row_filter=_all_of(terms),
        )
    return sorted(found.values(), key=lambda partition: partition.name)


def _compact_partition(
    table: Table, partition: _Partition, target_file_bytes: int, attempts: int
) -> PartitionCompaction | Literal["already compact", "skipped"]:
    """The partition rewritten, or why not: nothing needed it, or conflicts every attempt."""
    for attempt in range(1, attempts + 1):
        try:
            if attempt > 1:
                table.refresh()
            return _rewrite(table, partition, target_file_bytes, attempt) or "already compact"
        # pyiceberg retries a bare catalog conflict itself, and raises ValidationException when
        # the other commit added or deleted files in this partition: only planning again from
        # the new state can take its rows in. None of the attempt's snapshot is committed.
        except (CommitFailedException, ValidationException) as error:
            log.warning(
                "compaction_conflict",
                partition=partition.name,
                attempt=attempt,
                error=str(error).splitlines()[0] if str(error) else type(error).__name__,
            )
            if attempt < attempts:
                time.sleep(min(0.2 * 2**attempt, 5.0))
    return "skipped"


def _rewrite(
    table: Table, partition: _Partition, target_file_bytes: int, attempt: int
) -> PartitionCompaction | None:
    """Rewrite the partition's small files in one overwrite snapshot; None if none need it.

    Files are packed into bins of at most the target size on disk, and each bin becomes one
    file; a bin holding a single file is left alone, since rewriting it merges nothing.
    """
    small = [
        task
        for task in partition.files(table)
        if task.file.file_size_in_bytes < LARGE_ENOUGH * target_file_bytes and not task.delete_files
    ]
    packer: ListPacker[FileScanTask] = ListPacker(
        target_weight=target_file_bytes, lookback=len(small), largest_bin_first=False
    )
    bins = [
        bin_
        for bin_ in packer.pack(small, lambda task: task.file.file_size_in_bytes)
        if len(bin_) > 1
    ]
    if not bins:
        return None
    # The transaction is opened on the metadata the files were planned from, so pyiceberg's
    # conflict check covers every commit since.
    transaction = table.transaction()
    writer_metadata = _one_file_per_write(transaction.table_metadata)
    commit_uuid = uuid.uuid4()
    counter = itertools.count(0)
    replaced = [task.file for bin_ in bins for task in bin_]
    written: list[DataFile] = []
    with transaction.update_snapshot(
        snapshot_properties={COMPACTION_PROPERTY: "rewrite"}
    ).overwrite(commit_uuid=commit_uuid) as snapshot:
        snapshot.delete_by_predicate(partition.row_filter)
        for bin_ in bins:
            rows = _read(table, bin_).sort_by("sold_at")
            written.extend(write_data_files(writer_metadata, rows, table.io, commit_uuid, counter))
        rows_before = sum(data_file.record_count for data_file in replaced)
        rows_after = sum(data_file.record_count for data_file in written)
        if rows_after != rows_before:
            # Leaving the block by raising commits nothing.
            raise SinkError(
                f"compaction of {partition.name} read {rows_before} rows but wrote"
                f" {rows_after}; nothing was committed"
            )
        for data_file in replaced:
            snapshot.delete_data_file(data_file)
        for data_file in written:
            snapshot.append_data_file(data_file)
    transaction.commit_transaction()
    return PartitionCompaction(
        partition=partition.name,
        files_before=len(replaced),
        files_after=len(written),
        bytes_before=sum(data_file.file_size_in_bytes for data_file in replaced),
        bytes_after=sum(data_file.file_size_in_bytes for data_file in written),
        rows=rows_after,
        attempts=attempt,
    )


def _read(table: Table, tasks: list[FileScanTask]) -> pa.Table:
    """Every row of these files: they are replaced whole, so no filter may drop one."""
    return ArrowScan(
        table_metadata=table.metadata,
        io=table.io,
        projected_schema=table.schema(),
        row_filter=AlwaysTrue(),
    ).to_table(tasks=tasks)


def _one_file_per_write(metadata: TableMetadata) -> TableMetadata:
    """The metadata with a writer target no bin reaches, so each bin is written as ONE file.

    Bins are sized by their files' bytes on disk; pyiceberg's `write.target-file-size-bytes`
    counts uncompressed Arrow bytes (3-10 times as many), so the table's own target would
    split a bin into a number of files that depends on how well it compresses.
    """
    properties = {
        **metadata.properties,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES: str(sys.maxsize),
    }
    return metadata.model_copy(update={"properties": properties})


def _expire_snapshots(table: Table, cutoff: datetime, attempts: int) -> tuple[int, dict[str, int]]:
    """Expire the snapshots older than `cutoff` that nothing needs; return how many, and the
    data files (path: bytes) that no snapshot references any more."""
    conflict: CommitFailedException | None = None
    for _ in range(attempts):
        table.refresh()
        expirable = _expirable(table, cutoff)
        if not expirable:
            return 0, {}
        referenced = _data_files(table)
        try:
            table.maintenance.expire_snapshots().by_ids(expirable).commit()
        # Someone else committed in between: the expiry is recomputed on the new metadata.
        except CommitFailedException as error:
            conflict = error
            continue
        still_referenced = _data_files(table)
        return len(expirable), {
            path: size for path, size in referenced.items() if path not in still_referenced
        }
    raise SinkError(
        f"cannot expire snapshots of table {'.'.join(table.name())}: {attempts} attempts met"
        f" concurrent commits, the last: {conflict}"
    ) from conflict


def _expirable(table: Table, cutoff: datetime) -> list[int]:
    """Snapshots older than `cutoff`, except branch heads, tags and the progress snapshots."""
    metadata = table.metadata
    cutoff_ms = int(cutoff.timestamp() * 1000)
    kept = {ref.snapshot_id for ref in metadata.refs.values()} | _progress_snapshots(table)
    return [
        snapshot.snapshot_id
        for snapshot in metadata.snapshots
        if snapshot.timestamp_ms < cutoff_ms and snapshot.snapshot_id not in kept
    ]


def _progress_snapshots(table: Table) -> set[int]:
    """For each source, the snapshot naming its latest business day.

    `SalesTable.last_exported_day` reads the table's memory of progress from these summaries;
    expiring the one naming the latest day would make an exporter whose progress store knows
    of no run export only yesterday, and silently miss the days in between.
    """
    latest: dict[str, tuple[date, int, int]] = {}
    for snapshot in table.metadata.snapshots:
        summary = snapshot.summary
        source = summary.get(SOURCE_PROPERTY) if summary is not None else None
        if summary is None or source is None:
            continue
        with contextlib.suppress(TypeError, ValueError):
            day = date.fromisoformat(summary.get(BUSINESS_DATE_PROPERTY) or "")
            candidate = (day, snapshot.timestamp_ms, snapshot.snapshot_id)
            latest[source] = max(latest.get(source, candidate), candidate)
    return {snapshot_id for _, _, snapshot_id in latest.values()}


def _data_files(table: Table) -> dict[str, int]:
    """Every data file some snapshot references: path -> bytes."""
    files = table.inspect.all_data_files().select(["file_path", "file_size_in_bytes"])
    return dict(
        zip(
            files.column("file_path").to_pylist(),
            files.column("file_size_in_bytes").to_pylist(),
            strict=True,
        )
    )
