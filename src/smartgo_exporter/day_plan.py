"""Which days a scheduled export runs: yesterday, the days missed, and a few days read again.

The schedule (`scheduler.py`), the Lambda (`aws_lambda.py`) and `run` without a date all export
`export(settings)`'s plan: yesterday in the business time zone, every day missed since the last
successful run (at most `catch_up_days`), and then the `lookback_days` days before yesterday
that were exported already, read again because refunds, price corrections and edits reach the
source days after the sale. A re-read of an unchanged day costs a read of the source and a
lookup in the table: its photos and embeddings are reused, and with nothing changed nothing is
committed. Those runs are recorded with the trigger "lookback", apart from first exports.

    plan = days_due(settings)   # DayPlan(days=[2026-11-26], lookback=[2026-11-23, ..., 11-25])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import date, datetime, timedelta

from smartgo_exporter.config import Settings
from smartgo_exporter.errors import ExporterError
from smartgo_exporter.progress import NonFatalProgressStore, load_progress_store
from smartgo_exporter.sinks.iceberg import SalesTable
from smartgo_exporter.windows import catch_up, yesterday


@dataclasses.dataclass(frozen=True, slots=True)
class DayPlan:
    """The days an export runs, in the order it runs them: `days`, then `lookback`."""

    days: list[date]
    """Yesterday and the days missed since the last successful run: first exports."""
    lookback: list[date] = dataclasses.field(default_factory=list)
    """Days before those, exported already, read again for late changes; oldest first."""

    @property
    def all_days(self) -> list[date]:
        return [*self.days, *self.lookback]


def plan_days(
    settings: Settings,
    last_succeeded: date | None,
    now: datetime | None = None,
    *,
    last_in_table: date | None = None,
    exported: Callable[[date], bool] | None = None,
) -> DayPlan:
    """Yesterday, plus every day missed since `last_succeeded` (at most `catch_up_days`), then
    each of the `lookback_days` days before yesterday that is not among those and was
    `exported` before (the progress store has a run of it).

    When the progress store knows of no successful run (it was unreachable, or its records
    expired or were lost), `last_in_table`, the latest business day the table's snapshots
    name, stands in: the days after it are caught up, and that day itself is exported again,
    since the table cannot tell whether its run completed. Without `exported` no day is read
    again: a day never exported is no late change, and its sales wait for a `run --date`.
    """
    export = settings.export
    target = yesterday(export.timezone, now)
    if last_succeeded is None and last_in_table is not None:
        last_succeeded = last_in_table - timedelta(days=1)
    days = catch_up(last_succeeded, target, export.catch_up_days)
    if exported is None:
        return DayPlan(days)
    recent = (target - timedelta(days=back) for back in range(export.lookback_days, 0, -1))
    return DayPlan(days, [day for day in recent if day < days[0] and exported(day)])


def days_due(settings: Settings, now: datetime | None = None) -> DayPlan:
    """The days `export(settings)` would export at `now` (see `plan_days`).

    For callers that must know them first (the Lambda anchors them to its event's time and
    reports which ones its time budget left out).
    """
    progress = NonFatalProgressStore.connect(
        lambda: load_progress_store(settings.progress, retention_days=settings.retention_days)
    )

    def last_in_table() -> date | None:
        try:
            table = SalesTable.open(
                settings.table, source=settings.export.source_name, create=False
            )
        except ExporterError:
            return None
        return table.last_exported_day()

    try:
        return due_with(settings, progress, last_in_table, now)
    finally:
        progress.close()


def due_with(
    settings: Settings,
    progress: NonFatalProgressStore,
    last_in_table: Callable[[], date | None],
    now: datetime | None = None,
) -> DayPlan:
    """`days_due`, asking a progress store and a table the caller has open already."""
    last_succeeded = progress.last_succeeded_day()
    in_table = last_in_table() if last_succeeded is None else None
    return plan_days(
        settings,
        last_succeeded,
        now,
        last_in_table=in_table,
        exported=lambda day: bool(progress.runs_on(day)),
    )
