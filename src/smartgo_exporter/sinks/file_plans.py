"""Which data files a key lookup reads, planned once a month of a table state, not per batch.

A lookup reads the files of its batch's tenants whose `sold_at` statistics overlap the
batch's span. Planned by pyiceberg, that cost some 20 ms a lookup (reading manifests, binding
the filter anew for each of them, a residual for each file), about half of a lookup of a
small day, and a range of small days is a lookup a day. The files of a tenant's month do not
change until the next commit, so the month's plan is kept for the table's current snapshot,
and each lookup picks its files from it by their bounds, in Python, in microseconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from pyiceberg.table import FileScanTask, Table

from smartgo_exporter.sales import Key
from smartgo_exporter.sinks.key_filters import window_filter

_PlanKey = tuple[int, frozenset[str], datetime, datetime]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclasses.dataclass
class FilePlans:
    """The plans of one table's lookups and commits: the last one made, kept while the
    snapshot stands."""

    source: str
    _last: tuple[_PlanKey, list[FileScanTask]] | None = None

    def files_within(
        self, table: Table, keys: Iterable[Key], first: datetime, last: datetime
    ) -> list[FileScanTask]:
        """The files of the keys' tenants that may hold sales from `first` to `last`."""
        return self.files_of(table, {tenant for tenant, _ in keys}, [(first, last)])

    def files_of(
        self, table: Table, tenants: Collection[str], spans: Sequence[tuple[datetime, datetime]]
    ) -> list[FileScanTask]:
        """The files of `tenants` (empty: every tenant) that may hold sales of one of `spans`
        (first and last moment, both included): a lookup's batch, or the days a commit
        reconciles."""
        snapshot = table.current_snapshot()
        if snapshot is None or not spans:
            return []
        start = _month_of(min(first for first, _ in spans))
        end = _next_month(_month_of(max(last for _, last in spans)))
        plan_key = (snapshot.snapshot_id, frozenset(tenants), start, end)
        if self._last is None or self._last[0] != plan_key:
            months = window_filter(self.source, sorted(plan_key[1]), start, end)
            self._last = (plan_key, list(table.scan(row_filter=months).plan_files()))
        field = table.schema().find_field("sold_at").field_id
        return [
            task
            for task in self._last[1]
            if any(_may_overlap(task, field, first, last) for first, last in spans)
        ]


def _may_overlap(task: FileScanTask, field: int, first: datetime, last: datetime) -> bool:
    """Whether the file's `sold_at` bounds leave room for a sale from `first` to `last`; a file
    without them may hold anything."""
    lower = (task.file.lower_bounds or {}).get(field)
    upper = (task.file.upper_bounds or {}).get(field)
    if lower is not None and _stored_micros(lower) > _micros(last):
        return False
    return upper is None or _stored_micros(upper) >= _micros(first)


def _stored_micros(bound: bytes) -> int:
    """A timestamptz bound as Iceberg stores it: microseconds, 8 bytes, little-endian."""
    return int.from_bytes(bound, "little", signed=True)


def _micros(moment: datetime) -> int:
    """Microseconds since the epoch, as Iceberg keeps a timestamptz."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _month_of(moment: datetime) -> datetime:
    """The start of the UTC month of `moment`: the table's partitions are UTC months."""
    utc = moment.astimezone(UTC)
    return datetime(utc.year, utc.month, 1, tzinfo=UTC)


def _next_month(month: datetime) -> datetime:
    return month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)
