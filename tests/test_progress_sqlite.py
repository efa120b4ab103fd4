"""The embedded progress store: day, history and summary queries, expiry, no going back."""

import dataclasses
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from smartgo_exporter.progress import NonFatalProgressStore
from smartgo_exporter.progress.sqlite import SqliteProgressStore
from smartgo_exporter.records import RunCounts, RunError, RunRecord, RunStatus
from smartgo_exporter.windows import business_day

NOW = datetime.now(UTC)


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
        counts=RunCounts(sales=10, written=8, embedded=6, reused=2, failed=1, rejected=1),
    )


@pytest.fixture
def store(tmp_path: Path) -> SqliteProgressStore:
    return SqliteProgressStore(tmp_path / "progress.db")


def test_a_record_reads_back_as_it_was_saved(store: SqliteProgressStore) -> None:
    saved = record("r1", date(2026, 11, 1), RunStatus.PARTIAL)
    saved.record_error(RunError("1001", "source", "sale_price", "negative: -1.00"))
    store.save(saved)
    assert store.runs_on(date(2026, 11, 1)) == [saved]


def test_a_finished_run_is_never_set_back_to_running(store: SqliteProgressStore) -> None:
    running = record("r1", date(2026, 11, 1), RunStatus.RUNNING)
    store.save(running)
    store.save(dataclasses.replace(running, status=RunStatus.SUCCEEDED))
    store.save(dataclasses.replace(running, status=RunStatus.RUNNING))
    assert [r.status for r in store.runs_on(date(2026, 11, 1))] == [RunStatus.SUCCEEDED]


def test_recent_lists_the_newest_runs_first(store: SqliteProgressStore) -> None:
    for offset in range(5):
        store.save(
            record(
                f"r{offset}", date(2026, 11, 1 + offset), started=NOW + timedelta(minutes=offset)
            )
        )
    assert [r.run_id for r in store.recent(3)] == ["r4", "r3", "r2"]


def test_expired_records_are_neither_read_nor_kept(store: SqliteProgressStore) -> None:
    store.save(record("old", date(2026, 8, 1), expires=NOW - timedelta(seconds=1)))
    store.save(record("new", date(2026, 11, 1)))
    assert [r.run_id for r in store.recent(10)] == ["new"]
    assert store.runs_on(date(2026, 8, 1)) == []
    assert store._db.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_summary_counts_runs_statuses_rows_and_failures(store: SqliteProgressStore) -> None:
    ok = record("r1", date(2026, 11, 1))
    partial = record("r2", date(2026, 11, 2), RunStatus.PARTIAL)
    for _ in range(60):
        partial.record_error(RunError("9", "photo", "http_404"))
    store.save(ok)
    store.save(partial)
    summary = store.summary()
    assert summary.runs == 2
    assert summary.success_rate == 0.5
    assert summary.rows_written == 16
    assert summary.failures_by_reason == {"photo:http_404": 60}
    assert len(store.runs_on(date(2026, 11, 2))[0].errors) == 50


def test_the_last_succeeded_day_ignores_partial_and_failed_runs(store: SqliteProgressStore) -> None:
    store.save(record("r1", date(2026, 11, 1)))
    store.save(record("r2", date(2026, 11, 3), RunStatus.FAILED))
    store.save(record("r3", date(2026, 11, 4), RunStatus.PARTIAL))
    assert store.last_succeeded_day() == date(2026, 11, 1)


class BrokenStore(SqliteProgressStore):
    def save(self, record: RunRecord) -> None:
        raise OSError("disk I/O error")

    def last_succeeded_day(self) -> date | None:
        raise OSError("disk I/O error")


def test_a_failing_store_never_raises_through_the_wrapper(tmp_path: Path) -> None:
    store = NonFatalProgressStore(BrokenStore(tmp_path / "p.db"))
    store.save(record("r1", date(2026, 11, 1)))
    assert store.last_succeeded_day() is None
