"""Which data files an upsert rewrites, and what each of them keeps.

An upsert replaces rows by key and, at the end of a complete read of a day, removes the rows the
source no longer has (`Reconciliation`); both are done by rewriting the data files that hold
such rows without them. Finding those files is most of a commit's cost, so it is planned here,
apart from the snapshot that `sinks.iceberg` builds from the plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.schema import Schema
from pyiceberg.table import FileScanTask, Table

from smartgo_exporter.sales import Key
from smartgo_exporter.sinks.key_filters import key_mask, tenant_filter
from smartgo_exporter.sinks.reconciliation import Reconciliation


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """A data file to delete, and its rows to write again (none: the file just goes)."""

    task: FileScanTask
    kept: pa.Table


@dataclasses.dataclass(frozen=True)
class RewritePlan:
    files: list[Rewrite]
    removed: int
    """Rows dropped because the reconciliation found them gone, not because they are upserted."""


def plan_rewrites(
    table: Table, source: str, keys: Sequence[Key], reconcile: Reconciliation | None
) -> RewritePlan:
    """The files holding any of `keys`, or any row `reconcile` finds gone, each with what stays.

    Candidates are planned by tenant (for the keys) and by the window (for the reconciliation),
    then each is read for its key columns only to learn whether it holds a row to drop: file
    statistics cannot rule out most files (ids rarely sort with the files), and pyiceberg,
    given the key set, binds it anew for every manifest and file, which made each commit cost
    more as the table grew. Only the files that do hold one are read whole.
    """
    if table.current_snapshot() is None:
        return RewritePlan([], 0)
    filters: list[BooleanExpression] = []
    if keys:
        filters.append(tenant_filter(source, keys))
    if reconcile is not None:
        filters.append(reconcile.row_filter(source))
    candidates: dict[str, FileScanTask] = {}
    for row_filter in filters:
        for task in table.scan(row_filter=row_filter).plan_files():
            candidates.setdefault(task.file.file_path, task)
    if not candidates:
        return RewritePlan([], 0)
    columns = ["source", "tenant_id", "sale_id"] + (["sold_at"] if reconcile else [])
    key_columns = _scan(table, table.schema().select(*columns))

    def dropped(rows: pa.Table) -> tuple[pa.ChunkedArray, pa.ChunkedArray | None]:
        replaced = key_mask(rows, source, keys)
        if reconcile is None:
            return replaced, None
        gone = pc.and_not(reconcile.gone(rows, source), replaced)
        return pc.or_(replaced, gone), gone

    def drops_a_row(task: FileScanTask) -> bool:
        return bool(pc.any(dropped(key_columns.to_table(tasks=[task]))[0]).as_py())

    with ThreadPoolExecutor(thread_name_prefix="key-scan") as pool:
        holding = [
            task
            for task, drops in zip(
                candidates.values(), pool.map(drops_a_row, candidates.values()), strict=True
            )
            if drops
        ]
    whole = _scan(table, table.schema())
    files: list[Rewrite] = []
    removed = 0
    for task in holding:
        rows = whole.to_table(tasks=[task])
        drop, gone = dropped(rows)
        files.append(Rewrite(task, rows.filter(pc.invert(drop))))
        if gone is not None:
            removed += int(pc.sum(pc.cast(gone, pa.int64())).as_py() or 0)
    return RewritePlan(files, removed)


def _scan(table: Table, schema: Schema) -> ArrowScan:
    return ArrowScan(
        table_metadata=table.metadata, io=table.io, projected_schema=schema, row_filter=AlwaysTrue()
    )
