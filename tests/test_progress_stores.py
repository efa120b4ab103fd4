"""Every progress store, the same specification: day, history and summary queries, expiry, no
going back, and a wrapper that keeps store failures from stopping an export."""

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from smartgo_exporter.costs import Usage, price
from smartgo_exporter.progress import (
    FailureTally,
    NonFatalProgressStore,
    ProgressStore,
    RunSummary,
)
from smartgo_exporter.progress.dynamodb import DynamoProgressStore
from smartgo_exporter.progress.sqlite import SqliteProgressStore
from smartgo_exporter.run_records import (
    LOOKBACK_TRIGGER,
    RunCounts,
    RunError,
    RunRecord,
    RunStatus,
)
from smartgo_exporter.windows import business_day
from tests.servers.moto import MotoServer

NOW = datetime.now(UTC)
COST = price(
    Usage(
        titan_images=6,
        lambda_gb_seconds=Decimal("12.5"),
        table_write_requests=4,
        table_read_requests=6,
        dynamodb_write_units=7,
    )
)
"""A run's cost with every part in it, so that a store loses none unseen."""


def record(
    run_id: str,
    day: date,
    status: RunStatus = RunStatus.SUCCEEDED,
    *,
    started: datetime = NOW,
    expires: datetime | None = None,
) -> RunRecord:
    window = business_day(day, "UTC")
    return RunRecord(
        run_id=run_id,
        business_date=day,
        window_start=window.start,
        window_end=window.end,
        trigger="test",
        status=status,
        started_at=started,
        expires_at=expires or NOW + timedelta(days=90),
        counts=RunCounts(
            sales=10, written=8, embedded=6, reused=2, failed=1, rejected=1, normalised=1
        ),
        cost=COST,
    )


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProgressStore]:
    """An empty store of each kind; the DynamoDB one in its own table on the moto server."""
    opened: ProgressStore
    if request.param == "sqlite":
        opened = SqliteProgressStore(tmp_path / "progress.db")
    else:
        moto: MotoServer = request.getfixturevalue("moto_server")
        table = f"progress-{uuid.uuid4().hex[:12]}"
        opened = DynamoProgressStore(moto.client("dynamodb"), table, create_table=True)
    yield opened
    opened.close()


def test_a_record_reads_back_as_it_was_saved(store: ProgressStore) -> None:
    saved = record("r1", date(2026, 11, 1), RunStatus.PARTIAL)
    saved.record_error(RunError("1001", "source", "sale_price", "negative: -1.00"))
    saved.finished_at = NOW + timedelta(minutes=3)
    saved.message = "1 row rejected"
    store.save(saved)
    assert store.runs_on(date(2026, 11, 1)) == [saved]
    assert store.recent(1) == [saved]


class EarlierVersionRecord(RunRecord):
    """A record as a version before `RunCounts.deferred` saved it: its counts lack the field."""

    def to_document(self) -> dict[str, Any]:
        document = super().to_document()
        del document["counts"]["deferred"]
        return document


def test_a_record_saved_before_the_deferred_count_existed_reads_back_with_none_deferred(
    store: ProgressStore,
) -> None:
    saved = record("r1", date(2026, 11, 1))
    store.save(
        EarlierVersionRecord(**{f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)})
    )
    [loaded] = store.runs_on(date(2026, 11, 1))
    assert loaded == saved
    assert loaded.counts.deferred == 0
    assert store.summary().rows_written == saved.counts.written


def test_a_day_lists_only_its_own_runs_in_start_order(store: ProgressStore) -> None:
    store.save(record("late", date(2026, 11, 1), started=NOW + timedelta(hours=1)))
    store.save(record("early", date(2026, 11, 1), RunStatus.FAILED))
    store.save(record("other-day", date(2026, 11, 2)))
    assert [r.run_id for r in store.runs_on(date(2026, 11, 1))] == ["early", "late"]
    assert store.runs_on(date(2026, 11, 3)) == []


def test_saving_again_updates_the_run_in_place(store: ProgressStore) -> None:
    running = record("r1", date(2026, 11, 1), RunStatus.RUNNING)
    store.save(running)
    running.counts.written = 500
    store.save(running)
    assert [r.counts.written for r in store.runs_on(date(2026, 11, 1))] == [500]


def test_a_finished_run_is_never_set_back_to_running(store: ProgressStore) -> None:
    running = record("r1", date(2026, 11, 1), RunStatus.RUNNING)
    store.save(running)
    store.save(dataclasses.replace(running, status=RunStatus.SUCCEEDED))
    store.save(dataclasses.replace(running, status=RunStatus.RUNNING))
    assert [r.status for r in store.runs_on(date(2026, 11, 1))] == [RunStatus.SUCCEEDED]
    assert store.last_succeeded_day() == date(2026, 11, 1)


def test_recent_lists_the_newest_runs_first(store: ProgressStore) -> None:
    for offset in range(5):
        store.save(
            record(
                f"r{offset}", date(2026, 11, 1 + offset), started=NOW + timedelta(minutes=offset)
            )
        )
    assert [r.run_id for r in store.recent(3)] == ["r4", "r3", "r2"]


def test_recent_reaches_back_across_months(store: ProgressStore) -> None:
    store.save(record("two-months-ago", date(2026, 9, 1), started=NOW - timedelta(days=62)))
    store.save(record("last-month", date(2026, 10, 1), started=NOW - timedelta(days=31)))
    store.save(record("today", date(2026, 11, 1)))
    assert [r.run_id for r in store.recent(10)] == ["today", "last-month", "two-months-ago"]
    assert [r.run_id for r in store.recent(2)] == ["today", "last-month"]
    assert store.summary().runs == 3


def test_expired_records_are_not_read(store: ProgressStore) -> None:
    store.save(record("old", date(2026, 8, 1), expires=NOW - timedelta(seconds=1)))
    store.save(record("new", date(2026, 7, 1), RunStatus.FAILED))
    assert [r.run_id for r in store.recent(10)] == ["new"]
    assert store.runs_on(date(2026, 8, 1)) == []
    assert store.summary().runs == 1
    assert store.last_succeeded_day() is None


def test_summary_counts_runs_statuses_rows_and_failures(store: ProgressStore) -> None:
    ok = record("r1", date(2026, 11, 1))
    partial = record("r2", date(2026, 11, 2), RunStatus.PARTIAL)
    for _ in range(60):
        partial.record_error(RunError("9", "photo", "http_404"))
    store.save(ok)
    store.save(partial)
    summary = store.summary()
    assert summary == RunSummary(
        runs=2,
        by_status={"SUCCEEDED": 1, "PARTIAL": 1},
        by_trigger={"test": 2},
        rows_written=16,
        rows_removed=0,
        late_changes=0,
        embedded=12,
        reused=4,
        failures_by_reason={"photo:http_404": 60},
        first_day=date(2026, 11, 1),
        last_day=date(2026, 11, 2),
        cost_by_day={NOW.date(): 2 * COST.total},
        cost_by_month={f"{NOW:%Y-%m}": 2 * COST.total},
        cost_by_service={service: 2 * usd for service, usd in COST.by_service().items()},
    )
    assert summary.success_rate == 0.5
    assert len(store.runs_on(date(2026, 11, 2))[0].errors) == 50


def test_the_summary_tells_lookback_runs_apart_from_first_exports(store: ProgressStore) -> None:
    store.save(record("first", date(2026, 11, 4)))
    again = record("again", date(2026, 11, 1))
    again.trigger = LOOKBACK_TRIGGER
    again.counts = RunCounts(sales=10, unchanged=7, written=2, removed=1)
    store.save(again)
    summary = store.summary()
    assert summary.by_trigger == {"test": 1, LOOKBACK_TRIGGER: 1}
    assert (summary.rows_written, summary.rows_removed, summary.late_changes) == (10, 1, 3)


def test_a_document_saved_before_sales_could_be_voided_or_removed_still_loads() -> None:
    old = record("old", date(2026, 11, 1))
    document = old.to_document()
    for count in ("removed", "voided"):
        del document["counts"][count]
    assert RunRecord.from_document(document) == old


class RecordBeforeCosts(RunRecord):
    """A record as a version before `RunRecord.cost` saved it: its document has no cost."""

    def to_document(self) -> dict[str, Any]:
        document = super().to_document()
        del document["cost"]
        return document


def test_a_record_saved_before_costs_were_estimated_reads_back_without_one(
    store: ProgressStore,
) -> None:
    saved = dataclasses.replace(record("r1", date(2026, 11, 1)), cost=None)
    store.save(
        RecordBeforeCosts(**{f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)})
    )
    store.save(record("r2", date(2026, 11, 2)))
    assert store.runs_on(date(2026, 11, 1)) == [saved]
    summary = store.summary()
    assert (summary.cost, summary.runs_without_cost) == (COST.total, 1)


def test_the_summary_sums_costs_by_the_utc_day_and_month_the_runs_started(
    store: ProgressStore,
) -> None:
    month_ago, yesterday = NOW - timedelta(days=31), NOW - timedelta(days=1)
    store.save(record("a", date(2026, 11, 1), started=month_ago))
    store.save(record("b", date(2026, 11, 1), started=yesterday))
    store.save(record("c", date(2026, 11, 2), started=yesterday + timedelta(seconds=1)))
    store.save(record("d", date(2026, 11, 2)))
    summary = store.summary()
    assert summary.cost_by_day == {
        month_ago.date(): COST.total,
        yesterday.date(): 2 * COST.total,
        NOW.date(): COST.total,
    }
    by_month: dict[str, Decimal] = {}
    for started, runs in ((month_ago, 1), (yesterday, 2), (NOW, 1)):
        month = f"{started:%Y-%m}"
        by_month[month] = by_month.get(month, Decimal(0)) + runs * COST.total
    assert summary.cost_by_month == by_month
    assert list(summary.cost_by_month) == sorted(by_month)
    assert summary.cost == 4 * COST.total


def test_an_empty_store_summarises_to_nothing(store: ProgressStore) -> None:
    assert store.summary().runs == 0
    assert store.recent(5) == []
    assert store.last_succeeded_day() is None


def test_the_last_succeeded_day_ignores_partial_and_failed_runs(store: ProgressStore) -> None:
    store.save(record("r1", date(2026, 11, 1)))
    store.save(record("r2", date(2026, 11, 3), RunStatus.FAILED))
    store.save(record("r3", date(2026, 11, 4), RunStatus.PARTIAL))
    assert store.last_succeeded_day() == date(2026, 11, 1)


def test_the_last_succeeded_day_is_the_latest_day_not_the_latest_run(
    store: ProgressStore,
) -> None:
    store.save(record("r1", date(2026, 11, 5)))
    store.save(record("catch-up", date(2026, 11, 2), started=NOW + timedelta(minutes=5)))
    assert store.last_succeeded_day() == date(2026, 11, 5)


class _FailingStore:
    """A store whose every call fails, as an unreachable or broken one does."""

    def __getattr__(self, name: str) -> object:
        def fail(*args: object) -> None:
            raise OSError("disk I/O error")

        return fail


def test_a_failing_store_never_raises_through_the_wrapper() -> None:
    store = NonFatalProgressStore(_FailingStore())  # type: ignore[arg-type]
    store.save(record("r1", date(2026, 11, 1)))
    assert store.last_succeeded_day() is None
    assert store.runs_on(date(2026, 11, 1)) == []
    assert store.recent(5) == []
    assert store.summary().runs == 0
    store.close()


def test_every_failure_the_wrapper_swallows_is_counted(moto_server: MotoServer) -> None:
    """A DynamoDB table that is not there answers every call with ResourceNotFoundException,
    as one the role may not use answers AccessDeniedException: the export goes on, counted."""
    missing = DynamoProgressStore(moto_server.client("dynamodb"), f"missing-{uuid.uuid4().hex}")
    failures = FailureTally()
    store = NonFatalProgressStore(missing, failures)
    store.save(record("r1", date(2026, 11, 1)))
    assert store.runs_on(date(2026, 11, 1)) == []
    assert store.recent(5) == []
    assert store.summary().runs == 0
    assert store.last_succeeded_day() is None
    assert store.acquire_lease("window:t:2026-11-01", "r1", ttl_seconds=60)
    assert store.renew_lease("window:t:2026-11-01", "r1", ttl_seconds=60)
    store.release_lease("window:t:2026-11-01", "r1")
    assert failures.count == 8


def test_a_store_that_cannot_be_opened_counts_once_and_once_more_per_record_lost() -> None:
    def unopenable() -> ProgressStore:
        raise OSError("unable to open database file")

    failures = FailureTally()
    store = NonFatalProgressStore.connect(unopenable, failures)
    assert failures.count == 1
    store.save(record("r1", date(2026, 11, 1)))
    store.save(record("r1", date(2026, 11, 1), RunStatus.FAILED))
    assert store.runs_on(date(2026, 11, 1)) == []
    assert failures.count == 3


def test_a_working_store_counts_no_failure(store: ProgressStore) -> None:
    failures = FailureTally()
    wrapped = NonFatalProgressStore(store, failures)
    wrapped.save(record("r1", date(2026, 11, 1)))
    assert [r.run_id for r in wrapped.runs_on(date(2026, 11, 1))] == ["r1"]
    assert wrapped.acquire_lease("window:t:2026-11-01", "r1", ttl_seconds=60)
    wrapped.release_lease("window:t:2026-11-01", "r1")
    assert failures.count == 0
