"""The Iceberg table: catalog loading, table creation, key lookups and the idempotent upsert.

Every write is an upsert on (source, tenant_id, sale_id) committed as ONE overwrite snapshot:
the data files holding any of the batch's keys are rewritten without those rows, and the batch
is added, in the same commit. A re-run therefore replaces rows instead of adding them, a crash
before the commit leaves the table as it was, and a reader never sees a half-applied batch.
The snapshot's summary carries the run id, so the table itself says which run wrote what.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from functools import reduce
from pathlib import Path
from typing import cast

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, ValidationException
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo, In, Or
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import IdentityTransform, MonthTransform

from smartgo_exporter.config import TableConfig
from smartgo_exporter.errors import SinkError
from smartgo_exporter.records import ARROW_SCHEMA, ICEBERG_SCHEMA, Key, StoredRows

# pyiceberg's predicates are pydantic models whose generated signatures mypy's pydantic plugin
# misreads; these aliases keep the documented positional form type-checked.
_equal_to = cast(Callable[[str, str], BooleanExpression], EqualTo)
_in = cast(Callable[[str, set[str]], BooleanExpression], In)

RUN_ID_PROPERTY = "smartgo.run-id"
"""Snapshot summary property naming the export run that committed the snapshot."""

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


def open_catalog(config: TableConfig) -> Catalog:
    """pyiceberg's `load_catalog` with the configured properties; local folders are created."""
    properties = dict(config.catalog)
    uri = properties.get("uri", "")
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    warehouse = properties.get("warehouse", "")
    if warehouse.startswith("file://"):
        Path(warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    try:
        return load_catalog(config.catalog_name, **properties)
    except Exception as error:
        raise SinkError(f"cannot open catalog {config.catalog_name!r}: {error}") from error


class SalesTable:
    """The sales table of one source: what the pipeline reads keys from and upserts into."""

    def __init__(self, table: Table, *, source: str, commit_attempts: int = 4) -> None:
        self.table = table
        self.source = source
        self.commit_attempts = commit_attempts

    @classmethod
    def open(cls, config: TableConfig, *, source: str, create: bool = True) -> SalesTable:
        """Load the table, creating namespace and table (or adding new columns) as needed."""
        catalog = open_catalog(config)
        identifier = (config.namespace, config.name)
        try:
            if create:
                catalog.create_namespace_if_not_exists(config.namespace)
                table = catalog.create_table_if_not_exists(
                    identifier,
                    schema=ICEBERG_SCHEMA,
                    partition_spec=PARTITION_SPEC,
                    sort_order=SORT_ORDER,
                    properties=TABLE_PROPERTIES,
                )
                table = _evolve_schema(table)
            else:
                table = catalog.load_table(identifier)
        except NoSuchTableError:
            raise SinkError(f"table {'.'.join(identifier)} does not exist") from None
        except SinkError:
            raise
        except Exception as error:
            raise SinkError(f"cannot open table {'.'.join(identifier)}: {error}") from error
        return cls(table, source=source, commit_attempts=config.commit_attempts)

    def stored(self, keys: Iterable[Key]) -> StoredRows:
        """The rows already in the table for these keys (at most one each)."""
        keys = list(keys)
        if not keys or self.table.current_snapshot() is None:
            return StoredRows(ARROW_SCHEMA.empty_table(), {})
        self.table.refresh()
        found = self.table.scan(row_filter=self._key_filter(keys)).to_arrow()
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

    def upsert(self, rows: pa.Table, *, run_id: str) -> None:
        """Replace any stored rows with these rows' keys by these rows, in one snapshot.

        A concurrent commit that touches the same keys makes ours fail validation; the batch
        is then re-planned against the new table state and committed again, up to
        `commit_attempts` times, so neither writer's rows are lost or duplicated.
        """
        if rows.num_rows == 0:
            return
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
        for attempt in itertools.count(1):
            try:
                self._commit(rows, keys, run_id)
                return
            # pyiceberg retries a bare catalog conflict itself; it raises ValidationException when
            # the other writer touched our keys, and then only re-planning from the new state
            # (which rows to rewrite) is right.
            except (CommitFailedException, ValidationException) as error:
                if attempt >= self.commit_attempts:
                    raise SinkError(
                        f"commit failed {attempt} times, the last because: {error}"
                    ) from error
                time.sleep(min(0.2 * 2**attempt, 5.0))
                self.table.refresh()

    def query(self, statement: str) -> pa.Table:
        """Run DuckDB SQL over the table, visible as `sales`; the scan streams into DuckDB."""
        connection = duckdb.connect()
        try:
            connection.register("sales", self.table.scan().to_arrow_batch_reader())
            return connection.execute(statement).to_arrow_table()
        except duckdb.Error as error:
            raise SinkError(f"query failed: {error}") from None
        finally:
            connection.close()

    def _commit(self, rows: pa.Table, keys: Sequence[Key], run_id: str) -> None:
        key_filter = self._key_filter(keys)
        transaction = self.table.transaction()
        metadata = transaction.table_metadata
        commit_uuid = uuid.uuid4()
        counter = itertools.count(0)
        with transaction.update_snapshot(snapshot_properties={RUN_ID_PROPERTY: run_id}).overwrite(
            commit_uuid=commit_uuid
        ) as snapshot:
            # The predicate scopes pyiceberg's conflict check to our keys' partitions.
            snapshot.delete_by_predicate(key_filter)
            if self.table.current_snapshot() is not None:
                for task in self.table.scan(row_filter=key_filter).plan_files():
                    current = _read_file(self.table, task)
                    keep = pc.invert(_key_mask(current, self.source, keys))
                    kept = current.filter(keep)
                    if kept.num_rows == current.num_rows:
                        continue
                    snapshot.delete_data_file(task.file)
                    if kept.num_rows:
                        for data_file in _dataframe_to_data_files(
                            metadata, kept, self.table.io, commit_uuid, counter
                        ):
                            snapshot.append_data_file(data_file)
            for data_file in _dataframe_to_data_files(
                metadata, rows, self.table.io, commit_uuid, counter
            ):
                snapshot.append_data_file(data_file)
        transaction.commit_transaction()

    def _key_filter(self, keys: Iterable[Key]) -> BooleanExpression:
        by_tenant: dict[str, set[str]] = {}
        for tenant, sale in keys:
            by_tenant.setdefault(tenant, set()).add(sale)
        per_tenant: list[BooleanExpression] = [
            And(_equal_to("tenant_id", tenant), _in("sale_id", sales))
            for tenant, sales in by_tenant.items()
        ]
        either: Callable[[BooleanExpression, BooleanExpression], BooleanExpression] = Or
        return And(_equal_to("source", self.source), reduce(either, per_tenant))


def _read_file(table: Table, task: FileScanTask) -> pa.Table:
    return ArrowScan(
        table_metadata=table.metadata,
        io=table.io,
        projected_schema=table.schema(),
        row_filter=AlwaysTrue(),
    ).to_table(tasks=[task])


def _key_mask(table: pa.Table, source: str, keys: Sequence[Key]) -> pa.ChunkedArray:
    """Which rows of `table` have one of `keys`; a separator no id contains joins the pair."""
    wanted = pa.array(
        [f"{source}\x1f{tenant}\x1f{sale}" for tenant, sale in keys], pa.large_string()
    )
    joined = pc.binary_join_element_wise(
        table.column("source").cast(pa.large_string()),
        table.column("tenant_id").cast(pa.large_string()),
        table.column("sale_id").cast(pa.large_string()),
        pa.scalar("\x1f", pa.large_string()),
    )
    return pc.is_in(joined, value_set=wanted)


def _evolve_schema(table: Table) -> Table:
    """Add columns this version writes that an older table lacks; data files are not rewritten."""
    missing = {field.name for field in ICEBERG_SCHEMA.fields} - {
        field.name for field in table.schema().fields
    }
    if missing:
        with table.update_schema() as update:
            update.union_by_name(ICEBERG_SCHEMA)
    return table
