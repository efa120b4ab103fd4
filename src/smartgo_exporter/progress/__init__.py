"""Where run records live. `load_progress_store(config)` picks the backend named by `config.type`.

The progress store answers three questions cheaply: what ran on a day, what ran recently, and how
runs have gone overall; and it tells catch-up the last day exported in full. It must never stop
an export: the pipeline only ever talks to it through `NonFatalProgressStore`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import date
from typing import TYPE_CHECKING, Protocol

import structlog

from smartgo_exporter.records import RunRecord, RunStatus

if TYPE_CHECKING:
    from smartgo_exporter.config import ProgressConfig

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class RunSummary:
    """Totals over the stored (unexpired) runs."""

    runs: int
    by_status: dict[str, int]
    rows_written: int
    embedded: int
    reused: int
    failures_by_reason: dict[str, int]
    first_day: date | None
    last_day: date | None

    @property
    def success_rate(self) -> float:
        return self.by_status.get(RunStatus.SUCCEEDED, 0) / self.runs if self.runs else 0.0


class ProgressStore(Protocol):
    """Run records, kept for a retention period and then forgotten.

    `save(record)` inserts or updates by `run_id`; it never moves a finished run back to RUNNING,
    so a late or repeated update cannot undo a final status. Reads leave out records whose
    `expires_at` has passed, even where the backend deletes them late. Backends raise whatever
    their client raises; callers wrap the store in NonFatalProgressStore.

        store = load_progress_store(settings.progress)
        store.save(record)
        store.runs_on(date(2026, 11, 26))
    """

    def save(self, record: RunRecord) -> None: ...

    def runs_on(self, day: date) -> list[RunRecord]: ...

    def recent(self, limit: int) -> list[RunRecord]: ...

    def summary(self) -> RunSummary: ...

    def last_succeeded_day(self) -> date | None: ...

    def close(self) -> None: ...


def summarise(records: list[RunRecord]) -> RunSummary:
    """The summary of a list of runs; backends that cannot aggregate server-side use this."""
    status = Counter(str(record.status) for record in records)
    reasons: Counter[str] = Counter()
    for record in records:
        reasons.update(record.failures)
    days = [record.business_date for record in records]
    return RunSummary(
        runs=len(records),
        by_status=dict(status),
        rows_written=sum(record.counts.written for record in records),
        embedded=sum(record.counts.embedded for record in records),
        reused=sum(record.counts.reused for record in records),
        failures_by_reason=dict(reasons.most_common()),
        first_day=min(days, default=None),
        last_day=max(days, default=None),
    )


class NonFatalProgressStore:
    """A ProgressStore whose failures are logged and swallowed, so the export always goes on.

    Reads that fail answer "nothing known" (an empty list, None); a failed save is logged with
    the run id, and the run continues.
    """

    def __init__(self, store: ProgressStore) -> None:
        self._store = store

    def save(self, record: RunRecord) -> None:
        try:
            self._store.save(record)
        except Exception as error:
            log.warning("progress_store_save_failed", run_id=record.run_id, error=str(error))

    def last_succeeded_day(self) -> date | None:
        try:
            return self._store.last_succeeded_day()
        except Exception as error:
            log.warning("progress_store_read_failed", error=str(error))
            return None

    def close(self) -> None:
        try:
            self._store.close()
        except Exception as error:
            log.warning("progress_store_close_failed", error=str(error))


def load_progress_store(config: ProgressConfig, *, retention_days: int = 90) -> ProgressStore:
    """The ProgressStore for `config.type`: `sqlite` locally."""
    from smartgo_exporter.progress.sqlite import SqliteProgressStore

    return SqliteProgressStore(config.path, retention_days=retention_days)
