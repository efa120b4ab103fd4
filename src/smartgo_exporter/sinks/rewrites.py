"""Which data files an upsert rewrites, and what each of them keeps.

An upsert replaces rows by key and, at the end of a complete read of a day, removes the rows the
source no longer has (`Reconciliation`); both are done by rewriting the data files that hold
such rows without them. Finding those files is most of a commit's cost, so it is planned here,
apart from the snapshot that `sinks.iceberg` builds from the plan.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.schema import Schema
from pyiceberg.table import FileScanTask, Table

from smartgo_exporter.sales import Key
from smartgo_exporter.sinks.file_cache import FileCache
from smartgo_exporter.sinks.file_plans import FilePlans
from smartgo_exporter.sinks.key_filters import key_values, keys_in
from smartgo_exporter.sinks.manifests import files_by_tenant
from smartgo_exporter.sinks.reconciliation import Reconciliation


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """A data file to delete, and its rows to write again (none: the file just goes)."""

    task: FileScanTask
    kept: pa.Table


@dataclasses.dataclass(frozen=True)
class RewritePlan:
    files: list[Rewrite]
    removed: list[int]
    """Rows dropped because a reconciliation found them gone (not because they are upserted),
    for each reconciliation in turn."""


def plan_rewrites(
    table: Table,
    source: str,
    keys: Sequence[Key],
    reconcile: Sequence[Reconciliation],
    cache: FileCache | None = None,
    plans: FilePlans | None = None,
) -> RewritePlan:
    """The files holding any of `keys`, or any row one of `reconcile` finds gone, each with
    what stays.

    Candidates are planned by tenant (for the keys) and by the windows (for the
    reconciliations: of several days at once in one scan, when a commit ends several days),
    then each is read for its key columns only to learn whether it holds a row to drop. A
    tenant's file whose sale id bounds hold none of the keys is no candidate (`_may_hold`):
    point-of-sale ids grow with time, so a day's keys fall in the bounds of that day's files
    and of few others, and a commit reads what it touches, not every file of the tenant.
    pyiceberg could not prune so: given the key set, it binds it anew for every manifest and
    file (which made each commit cost more as the table grew), and it checks a set of over
    200 values against no bounds at all. Only the files that hold a row to drop are read whole.
    The days' files are picked from the lookups' plan of their months (`plans`), and a small
    file the lookups read already comes from `cache`, theirs.
    """
    nothing_removed = [0] * len(reconcile)
    if table.current_snapshot() is None:
        return RewritePlan([], nothing_removed)
    candidates: dict[str, FileScanTask] = {}
    if keys:
        by_tenant = _ids_by_tenant(keys)
        fields = (
            table.schema().find_field("tenant_id").field_id,
            table.schema().find_field("sale_id").field_id,
        )
        tenants = {tenant for tenant, _ in keys}
        for tasks in files_by_tenant(table, tenants, source).values():
            for task in tasks:
                if _may_hold(task, by_tenant, *fields):
                    candidates.setdefault(task.file.file_path, task)
    if reconcile:
        # Every tenant if one of the days was read for every tenant.
        tenants = set().union(*(day.tenant_ids for day in reconcile))
        if not all(day.tenant_ids for day in reconcile):
            tenants = set()
        spans = [(day.start, day.end) for day in reconcile]
        for task in (plans or FilePlans(source)).files_of(table, tenants, spans):
            candidates.setdefault(task.file.file_path, task)
    if not candidates:
        return RewritePlan([], nothing_removed)
    columns = ["source", "tenant_id", "sale_id"] + (["sold_at"] if reconcile else [])
    key_columns = _scan(table, table.schema().select(*columns))
    upserted = key_values(source, keys)

    def dropped(rows: pa.Table) -> tuple[pa.ChunkedArray, list[pa.ChunkedArray]]:
        replaced = keys_in(rows, upserted)
        gone = [pc.and_not(day.gone(rows, source), replaced) for day in reconcile]
        return functools.reduce(pc.or_, gone, replaced), gone

    def rows_of(task: FileScanTask, scan: ArrowScan) -> pa.Table:
        rows = cache.whole(table, task) if cache is not None else None
        return scan.to_table(tasks=[task]) if rows is None else rows

    def drops_a_row(task: FileScanTask) -> bool:
        return bool(pc.any(dropped(rows_of(task, key_columns))[0]).as_py())

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
    removed = nothing_removed
    for task in holding:
        rows = rows_of(task, whole)
        drop, gone = dropped(rows)
        files.append(Rewrite(task, rows.filter(pc.invert(drop))))
        removed = [
            count + int(pc.sum(pc.cast(day, pa.int64())).as_py() or 0)
            for count, day in zip(removed, gone, strict=True)
        ]
    return RewritePlan(files, removed)


def _ids_by_tenant(keys: Sequence[Key]) -> dict[bytes, list[bytes]]:
    """The keys' sale ids by tenant, sorted, as UTF-8: the order Iceberg's bounds are in."""
    by_tenant: dict[bytes, set[bytes]] = {}
    for tenant, sale in keys:
        by_tenant.setdefault(tenant.encode(), set()).add(sale.encode())
    return {tenant: sorted(ids) for tenant, ids in by_tenant.items()}


def _may_hold(
    task: FileScanTask,
    ids_by_tenant: Mapping[bytes, Sequence[bytes]],
    tenant_field: int,
    sale_field: int,
) -> bool:
    """Whether the file's statistics leave room for one of the keys: a tenant within its
    tenant bounds with a sale id within its sale id bounds. Bounds are truncated to a prefix
    (lower) or past it (upper), so they still hold every value; a file without them may hold
    anything."""
    lower, upper = task.file.lower_bounds or {}, task.file.upper_bounds or {}
    first_id, last_id = lower.get(sale_field), upper.get(sale_field)
    if first_id is None or last_id is None:
        return True
    first_tenant, last_tenant = lower.get(tenant_field), upper.get(tenant_field)
    for tenant, ids in ids_by_tenant.items():
        if first_tenant is not None and tenant < first_tenant:
            continue
        if last_tenant is not None and tenant > last_tenant:
            continue
        at = bisect.bisect_left(ids, first_id)
        if at < len(ids) and ids[at] <= last_id:
            return True
    return False


def _scan(table: Table, schema: Schema) -> ArrowScan:
    return ArrowScan(
        table_metadata=table.metadata, io=table.io, projected_schema=schema, row_filter=AlwaysTrue()
    )
