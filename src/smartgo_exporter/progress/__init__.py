"""Where run records live. `load_progress_store(config)` picks the backend named by `config.type`.

The progress store answers three questions cheaply: what ran on a day, what ran recently, and how
runs have gone overall; and it tells catch-up the last day exported in full. It also holds the
leases that keep two runs of one window from working at once. It must never stop an export: the
pipeline only ever talks to it through `NonFatalProgressStore`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

import structlog

from smartgo_exporter.costs import RunCost
from smartgo_exporter.run_records import LOOKBACK_TRIGGER, RunCounts, RunRecord, RunStatus

if TYPE_CHECKING:
    from smartgo_exporter.config import ProgressConfig

log = structlog.get_logger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class RunSummary:
    """Totals over the stored (unexpired) runs."""

    runs: int
    by_status: dict[str, int]
    by_trigger: dict[str, int]
    """Runs by what started them: first exports (schedule, manual, backfill) apart from the
    re-reads of exported days (lookback)."""
    rows_written: int
    rows_removed: int
    late_changes: int
    """Rows written or removed by lookback runs: the changes made at the source after a day's
    first export, which only reading it again picked up."""
    embedded: int
    reused: int
    failures_by_reason: dict[str, int]
    first_day: date | None
    last_day: date | None
    cost_by_day: dict[date, Decimal] = dataclasses.field(default_factory=dict)
    """Estimated USD by the UTC day the runs started, as AWS bills them, oldest first."""
    cost_by_month: dict[str, Decimal] = dataclasses.field(default_factory=dict)
    """The same by month (`2026-11`), oldest first."""
    cost_by_service: dict[str, Decimal] = dataclasses.field(default_factory=dict)
    runs_without_cost: int = 0
    """Runs without an estimate, not in the sums: recorded by versions before costs were
    estimated, interrupted (closed by the next run), or still RUNNING."""

    @property
    def cost(self) -> Decimal:
        return sum(self.cost_by_month.values(), Decimal(0))

    @property
    def success_rate(self) -> float:
        return self.by_status.get(RunStatus.SUCCEEDED, 0) / self.runs if self.runs else 0.0


class ProgressStore(Protocol):
    """Run records, kept for a retention period and then forgotten; and run leases.

    `save(record)` inserts or updates by `run_id`; it never moves a finished run back to RUNNING,
    so a late or repeated update cannot undo a final status. Reads leave out records whose
    `expires_at` has passed, even where the backend deletes them late. Backends raise whatever
    their client raises; callers wrap the store in NonFatalProgressStore.

        store = load_progress_store(settings.progress)
        store.save(record)
        store.runs_on(date(2026, 11, 26))

    A lease is a named lock with an owner and a time to live, so that two runs of one window
    (say `window:smartgo:2026-11-26`) do not work at once, and a crashed run's lease lapses on
    its own. `acquire_lease` is one atomic conditional write: it succeeds when nobody holds the
    lease, when the holder's time ran out, or when `owner` already holds it (which extends it).
    Expiry is judged by the clock of whoever asks, so hosts are assumed NTP-synchronised; the
    lease saves duplicate work, while correctness of a double run rests on the table's upserts.

        if store.acquire_lease("window:smartgo:2026-11-26", run_id, ttl_seconds=900):
            try:
                ...  # export the window, calling renew_lease now and then if it runs long
            finally:
                store.release_lease("window:smartgo:2026-11-26", run_id)
    """

    def save(self, record: RunRecord) -> None: ...

    def runs_on(self, day: date) -> list[RunRecord]: ...

    def recent(self, limit: int) -> list[RunRecord]: ...

    def summary(self) -> RunSummary: ...

    def last_succeeded_day(self) -> date | None: ...

    def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Take or extend lease `name` for `ttl_seconds`; False when another owner holds it."""
        ...

    def renew_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        """Extend a lease `owner` still holds; False when it was lost (taken over or released).

        Unlike `acquire_lease`, this never takes a lease that is free: a run that finds it has
        lost its lease should stop rather than quietly start holding it again.
        """
        ...

    def release_lease(self, name: str, owner: str) -> None:
        """Give lease `name` up, if `owner` holds it; a lease held by another owner is left."""
        ...

    def close(self) -> None: ...


class RunOutcome(Protocol):
    """The parts of a run that `summarise` reads, so a store can fetch only those."""

    @property
    def status(self) -> str: ...

    @property
    def trigger(self) -> str: ...

    @property
    def business_date(self) -> date: ...

    @property
    def counts(self) -> RunCounts: ...

    @property
    def failures(self) -> Mapping[str, int]: ...

    @property
    def started_at(self) -> datetime: ...

    @property
    def cost(self) -> RunCost | None: ...


def summarise(records: Sequence[RunOutcome]) -> RunSummary:
    """The summary of a list of runs; backends that cannot aggregate server-side use this."""
    status = Counter(str(record.status) for record in records)
    reasons: Counter[str] = Counter()
    for record in records:
        reasons.update(record.failures)
    days = [record.business_date for record in records]
    lookback = [record for record in records if record.trigger == LOOKBACK_TRIGGER]
    by_day: dict[date, Decimal] = {}
    by_service: dict[str, Decimal] = {}
    for record in sorted(records, key=lambda record: record.started_at):
        if record.cost is None:
            continue
        day = record.started_at.astimezone(UTC).date()
        by_day[day] = by_day.get(day, Decimal(0)) + record.cost.total
        for service, usd in record.cost.by_service().items():
            by_service[service] = by_service.get(service, Decimal(0)) + usd
    by_month: dict[str, Decimal] = {}
    for day, usd in by_day.items():
        by_month[f"{day:%Y-%m}"] = by_month.get(f"{day:%Y-%m}", Decimal(0)) + usd
    return RunSummary(
        runs=len(records),
        by_status=dict(status),
        by_trigger=dict(Counter(record.trigger for record in records)),
        rows_written=sum(record.counts.written for record in records),
        rows_removed=sum(record.counts.removed for record in records),
        late_changes=sum(record.counts.written + record.counts.removed for record in lookback),
        embedded=sum(record.counts.embedded for record in records),
        reused=sum(record.counts.reused for record in records),
        failures_by_reason=dict(reasons.most_common()),
        first_day=min(days, default=None),
        last_day=max(days, default=None),
        cost_by_day=by_day,
        cost_by_month=by_month,
        cost_by_service=by_service,
        runs_without_cost=sum(record.cost is None for record in records),
    )


def check_lease_ttl(ttl_seconds: float) -> None:
    """Refuse a lease that would be expired the moment it is taken: a caller's unit mistake."""
    if not ttl_seconds > 0:
        raise ValueError(f"a lease needs a positive time to live, not {ttl_seconds!r}")


class FailureTally:
    """How many progress-store failures `NonFatalProgressStore` has swallowed in this process.

    The wrapper must keep the export going, so a store that answers AccessDenied would
    otherwise only ever be a warning in the log, while it silently turns off the leases and the
    run history. The tally makes each failure countable: the Lambda handler reports the ones of
    its invocation as a metric, which an alarm watches. One per process (`FAILURES`), because
    the export and the day plan each open their own wrapped store; a caller reads `count`
    before and after a stretch of work. Safe to add to from several threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self) -> None:
        with self._lock:
            self._count += 1

    @property
    def count(self) -> int:
        with self._lock:
            return self._count


FAILURES = FailureTally()
"""Every NonFatalProgressStore of the process counts here unless given a tally of its own."""


class NonFatalProgressStore:
    """A ProgressStore whose failures are logged, counted and swallowed, so the export always
    goes on.

    Reads that fail answer "nothing known" (an empty list, an empty summary, None); a failed save
    is logged with the run id, and the run continues. Each failure, and each run record lost to
    a store that could not be opened, adds one to `failures` (by default the process's
    `FAILURES`), so that a store that keeps failing can be noticed without stopping anything.

    A lease that cannot be read or written counts as granted, with a warning: refusing would let
    an unreachable store stop every export, which the store must never do. The price is that
    while the store is down two runs of one window may overlap; the table's upserts keep that
    correct, only wasteful. For the same reason a failed renewal answers True, and a failed
    release is logged and left to lapse with the lease's time to live.
    """

    def __init__(self, store: ProgressStore, failures: FailureTally = FAILURES) -> None:
        self._store = store
        self._failures = failures

    @classmethod
    def connect(
        cls, open_store: Callable[[], ProgressStore], failures: FailureTally = FAILURES
    ) -> NonFatalProgressStore:
        """Open a store; one that cannot even be opened becomes a store that forgets."""
        try:
            return cls(open_store(), failures)
        except Exception as error:
            log.warning("progress_store_unavailable", error=str(error))
            failures.add()
            return cls(_ForgetfulStore(failures), failures)

    def save(self, record: RunRecord) -> None:
        try:
            self._store.save(record)
        except Exception as error:
            self._swallow("progress_store_save_failed", error, run_id=record.run_id)

    def runs_on(self, day: date) -> list[RunRecord]:
        try:
            return self._store.runs_on(day)
        except Exception as error:
            self._swallow("progress_store_read_failed", error)
            return []

    def recent(self, limit: int) -> list[RunRecord]:
        try:
            return self._store.recent(limit)
        except Exception as error:
            self._swallow("progress_store_read_failed", error)
            return []

    def summary(self) -> RunSummary:
        try:
            return self._store.summary()
        except Exception as error:
            self._swallow("progress_store_read_failed", error)
            return summarise([])

    def last_succeeded_day(self) -> date | None:
        try:
            return self._store.last_succeeded_day()
        except Exception as error:
            self._swallow("progress_store_read_failed", error)
            return None

    def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        check_lease_ttl(ttl_seconds)
        try:
            return self._store.acquire_lease(name, owner, ttl_seconds)
        except Exception as error:
            self._swallow("progress_store_lease_failed_granted", error, lease=name)
            return True

    def renew_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        check_lease_ttl(ttl_seconds)
        try:
            return self._store.renew_lease(name, owner, ttl_seconds)
        except Exception as error:
            self._swallow("progress_store_lease_failed_granted", error, lease=name)
            return True

    def release_lease(self, name: str, owner: str) -> None:
        try:
            self._store.release_lease(name, owner)
        except Exception as error:
            self._swallow("progress_store_lease_release_failed", error, lease=name)

    def close(self) -> None:
        try:
            self._store.close()
        except Exception as error:
            self._swallow("progress_store_close_failed", error)

    def _swallow(self, event: str, error: Exception, **fields: str) -> None:
        log.warning(event, error=str(error), **fields)
        self._failures.add()


def load_progress_store(config: ProgressConfig, *, retention_days: int = 90) -> ProgressStore:
    """The ProgressStore for `config.type`: `sqlite` locally, `dynamodb` on AWS.

    Each backend is imported only when chosen, so the local install needs no boto3.
    """
    from smartgo_exporter.config import DynamoProgressConfig

    if isinstance(config, DynamoProgressConfig):
        from smartgo_exporter.progress.dynamodb import DynamoProgressStore

        return DynamoProgressStore.from_config(config, retention_days=retention_days)

    from smartgo_exporter.progress.sqlite import SqliteProgressStore

    return SqliteProgressStore(
        config.path, retention_days=retention_days, busy_timeout_seconds=config.busy_timeout_seconds
    )


class _ForgetfulStore:
    """Stands in for a store that could not be opened: remembers nothing, grants every lease;
    each run record it cannot keep is a failure of its own."""

    def __init__(self, failures: FailureTally) -> None:
        self._failures = failures

    def save(self, record: RunRecord) -> None:
        log.warning("progress_not_recorded", run_id=record.run_id, status=str(record.status))
        self._failures.add()

    def runs_on(self, day: date) -> list[RunRecord]:
        return []

    def recent(self, limit: int) -> list[RunRecord]:
        return []

    def summary(self) -> RunSummary:
        return summarise([])

    def last_succeeded_day(self) -> date | None:
        return None

    def acquire_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        return True

    def renew_lease(self, name: str, owner: str, ttl_seconds: float) -> bool:
        return True

    def release_lease(self, name: str, owner: str) -> None:
        return None

    def close(self) -> None:
        return None
