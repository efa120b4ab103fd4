"""What only the embedded store does: it purges expired records itself, on every save."""

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from smartgo_exporter.progress.sqlite import SqliteProgressStore
from tests.test_progress_stores import record


def test_expired_records_are_deleted_on_the_next_save(tmp_path: Path) -> None:
    store = SqliteProgressStore(tmp_path / "progress.db")
    store.save(record("old", date(2026, 8, 1), expires=datetime.now(UTC) - timedelta(seconds=1)))
    store.save(record("new", date(2026, 11, 1)))
    assert store._db.execute("SELECT run_id FROM runs").fetchall() == [("new",)]
    store.close()


def test_a_record_saved_before_counts_had_normalised_reads_back_with_none(tmp_path: Path) -> None:
    store = SqliteProgressStore(tmp_path / "progress.db")
    store.save(record("r1", date(2026, 11, 1)))
    store._db.execute("UPDATE runs SET record = json_remove(record, '$.counts.normalised')")
    [read] = store.runs_on(date(2026, 11, 1))
    assert read.counts.normalised == 0
    assert read.counts.written == 8
    store.close()
