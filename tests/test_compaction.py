"""Compaction: a partition's small files rewritten into few, row for row; old snapshots expired."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.table import Table, Transaction
from typer.testing import CliRunner

from smartgo_exporter.cli import app
from smartgo_exporter.config import TableConfig
from smartgo_exporter.errors import ConfigError, SinkError
from smartgo_exporter.sinks import compaction
from smartgo_exporter.sinks.compaction import COMPACTION_PROPERTY, compact
from smartgo_exporter.sinks.iceberg import SalesTable
from tests.test_iceberg_sink import (
    batch,
    config,
    failed_batch,
    previous_version_table,
    sale,
)

__all__ = ["config"]

NOVEMBER = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
OCTOBER = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
A_NOVEMBER = "tenant_id=store-a/sold_at_month=2026-11"


def export_in_batches(
    config: TableConfig, tenant: str, day: datetime, batches: int, size: int = 5, first: int = 0
) -> SalesTable:
    """`batches` upserts of `size` new sales each: one small file each in the partition."""
    table = SalesTable.open(config, source="smartgo")
    for number in range(batches):
        start = first + number * size
        sales = [sale(sale_id, tenant, day=day) for sale_id in range(start, start + size)]
        table.upsert(batch(sales, run_id=f"run-{number}"), run_id=f"run-{number}")
    return table


def reloaded(table: SalesTable) -> Table:
    table.table.refresh()
    return table.table


def files_by_partition(table: Table) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task in table.scan().plan_files():
        name = table.spec().partition_to_path(task.file.partition, table.schema())
        counts[name] = counts.get(name, 0) + 1
    return counts


def rows_by_key(table: Table) -> pa.Table:
    return table.scan().to_arrow().sort_by([("tenant_id", "ascending"), ("sale_id", "ascending")])


def keys(rows: pa.Table) -> list[tuple[str, str]]:
    return list(zip(rows["tenant_id"].to_pylist(), rows["sale_id"].to_pylist(), strict=True))


def test_compaction_rewrites_many_small_files_into_one_per_partition(
    config: TableConfig,
) -> None:
    table = export_in_batches(config, "store-a", NOVEMBER, batches=8)
    export_in_batches(config, "store-b", NOVEMBER, batches=6)
    export_in_batches(config, "store-a", OCTOBER, batches=4, first=100)
    assert sorted(files_by_partition(reloaded(table)).values()) == [4, 6, 8]

    report = compact(config)

    assert files_by_partition(reloaded(table)) == {
        "tenant_id=store-a/sold_at_month=2026-10": 1,
        A_NOVEMBER: 1,
        "tenant_id=store-b/sold_at_month=2026-11": 1,
    }
    assert [(p.partition, p.files_before, p.files_after) for p in report.compacted] == [
        ("tenant_id=store-a/sold_at_month=2026-10", 4, 1),
        (A_NOVEMBER, 8, 1),
        ("tenant_id=store-b/sold_at_month=2026-11", 6, 1),
    ]


def test_compaction_commits_one_overwrite_snapshot_per_partition(config: TableConfig) -> None:
    table = export_in_batches(config, "store-a", NOVEMBER, batches=5)
    export_in_batches(config, "store-b", NOVEMBER, batches=3)
    before = len(reloaded(table).snapshots())

    compact(config)

    new = reloaded(table).snapshots()[before:]
    assert len(new) == 2
    assert {s.summary.operation.value for s in new if s.summary} == {"overwrite"}
    assert all(s.summary and s.summary[COMPACTION_PROPERTY] for s in new)
    assert sorted(
        (s.summary["deleted-data-files"], s.summary["added-data-files"]) for s in new if s.summary
    ) == [("3", "1"), ("5", "1")]


def test_compaction_keeps_every_row_exactly_once(config: TableConfig) -> None:
    table = export_in_batches(config, "store-a", NOVEMBER, batches=10)
    export_in_batches(config, "store-b", NOVEMBER, batches=4)
    table.upsert(batch([sale(3, price="99.00")], run_id="run-fix"), run_id="run-fix")
    before = rows_by_key(reloaded(table))

    report = compact(config)

    after = rows_by_key(reloaded(table))
    assert after.num_rows == before.num_rows == 70
    assert len(set(keys(after))) == after.num_rows
    assert after.equals(before)
    assert sum(p.rows for p in report.compacted) == 70


def test_files_from_before_and_after_the_table_gained_columns_compact_into_one(
    config: TableConfig,
) -> None:
    previous_version_table(config, [sale(n, day=NOVEMBER) for n in range(5)])
    table = SalesTable.open(config, source="smartgo")  # adds the photo failure columns
    table.upsert(failed_batch([sale(n, day=NOVEMBER) for n in range(5, 8)], 3), run_id="run-2")
    before = rows_by_key(reloaded(table))

    compact(config)

    assert files_by_partition(reloaded(table)) == {A_NOVEMBER: 1}
    after = rows_by_key(reloaded(table))
    assert after.equals(before)
    assert after["photo_failures"].to_pylist() == [None] * 5 + [3] * 3


def test_a_rewrite_that_would_lose_a_row_commits_nothing(
    config: TableConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = export_in_batches(config, "store-a", NOVEMBER, batches=3)
    snapshots = len(reloaded(table).snapshots())
    read = compaction._read
    monkeypatch.setattr(compaction, "_read", lambda *args: read(*args).slice(1))

    with pytest.raises(SinkError, match="read 15 rows but wrote 14; nothing was committed"):
        compact(config)

    assert len(reloaded(table).snapshots()) == snapshots
    assert reloaded(table).scan().to_arrow().num_rows == 15


def test_compaction_leaves_files_near_the_target_size_alone(config: TableConfig) -> None:
    table = export_in_batches(config, "store-a", NOVEMBER, batches=1, size=3000)
    export_in_batches(config, "store-a", NOVEMBER, batches=3, first=10_000)
    (large,) = [
        task.file for task in reloaded(table).scan().plan_files() if task.file.record_count == 3000
    ]

    report = compact(config, target_file_bytes=large.file_size_in_bytes)

    paths = {task.file.file_path for task in reloaded(table).scan().plan_files()}
    assert large.file_path in paths
    assert len(paths) == 2
    assert [(p.files_before, p.files_after) for p in report.compacted] == [(3, 1)]


def test_compaction_of_one_tenant_and_month_leaves_the_other_partitions_alone(
    config: TableConfig,
) -> None:
    table = export_in_batches(config, "store-a", NOVEMBER, batches=3)
    export_in_batches(config, "store-a", OCTOBER, batches=3, first=100)
    export_in_batches(config, "store-b", NOVEMBER, batches=3)

    report = compact(config, tenant="store-a", month=date(2026, 11, 1))

    assert files_by_partition(reloaded(table)) == {
        "tenant_id=store-a/sold_at_month=2026-10": 3,
        A_NOVEMBER: 1,
        "tenant_id=store-b/sold_at_month=2026-11": 3,
    }
    assert [p.partition for p in report.compacted] == [A_NOVEMBER]


def test_a_second_compaction_finds_every_partition_already_compact(config: TableConfig) -> None:
    table = export_in_batches(config, "store-a", NOVEMBER, batches=3)
    compact(config)
    snapshots = len(reloaded(table).snapshots())

    report = compact(config)

    assert (report.compacted, report.already_compact) == ([], 1)
    assert len(reloaded(table).snapshots()) == snapshots


def test_compaction_expires_snapshots_older_than_the_retention(config: TableConfig) -> None:
    table = SalesTable.open(config, source="smartgo")
    for number in range(5):
        table.upsert(batch([sale(number)]), run_id=f"run-{number}")
        time.sleep(0.01)  # distinct commit times
    snapshots = reloaded(table).snapshots()
    cutoff = datetime.fromtimestamp(snapshots[3].timestamp_ms / 1000, UTC)

    # A target of one byte leaves every file alone: only the expiry acts.
    report = compact(config, target_file_bytes=1, keep_days=7, now=cutoff + timedelta(days=7))

    remaining = [s.snapshot_id for s in reloaded(table).snapshots()]
    assert remaining == [s.snapshot_id for s in snapshots[3:]]
    assert (report.snapshots_expired, report.snapshots_kept) == (3, 2)


def test_expiry_keeps_the_latest_snapshot_however_old(config: TableConfig) -> None:
    table = SalesTable.open(config, source="smartgo")
    for number in range(3):
        table.upsert(batch([sale(number)]), run_id=f"run-{number}")
    latest = reloaded(table).snapshots()[-1].snapshot_id

    compact(config, target_file_bytes=1, keep_days=0, now=datetime.now(UTC) + timedelta(days=365))

    assert [s.snapshot_id for s in reloaded(table).snapshots()] == [latest]
    assert reloaded(table).scan().to_arrow().num_rows == 3


def test_expiry_keeps_the_snapshot_that_remembers_the_last_exported_day(
    config: TableConfig,
) -> None:
    table = SalesTable.open(config, source="smartgo")
    for number in range(3):
        day = date(2026, 11, 1) + timedelta(days=number)
        table.upsert(batch([sale(number)]), run_id=f"run-{number}", business_date=day)
    # A backfill of an older day commits last; the table still remembers the 3rd as the latest.
    table.upsert(batch([sale(9)]), run_id="backfill", business_date=date(2026, 10, 1))
    compact(config)  # its snapshot is now the current one

    compact(config, keep_days=0, now=datetime.now(UTC) + timedelta(days=30))

    assert SalesTable.open(config, source="smartgo").last_exported_day() == date(2026, 11, 3)
    assert len(reloaded(table).snapshots()) == 2


def test_expiry_deletes_no_file_and_counts_those_no_snapshot_references(
    config: TableConfig,
) -> None:
    table = export_in_batches(config, "store-a", NOVEMBER, batches=4)
    small = {task.file.file_path for task in reloaded(table).scan().plan_files()}
    compact(config)

    report = compact(config, keep_days=0, now=datetime.now(UTC) + timedelta(days=1))

    assert report.unreferenced_files == 4
    assert report.unreferenced_bytes > 0
    assert all(Path(path.removeprefix("file://")).exists() for path in small)


def test_compaction_refuses_an_s3tables_catalog() -> None:
    config = TableConfig(
        catalog={
            "type": "s3tables",
            "warehouse": "arn:aws:s3tables:eu-west-1:111122223333:bucket/pricing-intelligence",
        }
    )

    with pytest.raises(ConfigError, match="S3 Tables compacts its tables"):
        compact(config)


# --- a concurrent export ------------------------------------------------------------------------


@pytest.fixture
def export_before_each_compaction_commit(
    config: TableConfig, monkeypatch: pytest.MonkeyPatch
) -> list[pa.Table]:
    """Batches an exporter commits, one each, just before compaction's next commits.

    So the exporter's commit always lands between compaction's plan and its commit, the
    window in which a compaction that ignored it would drop its rows.
    """
    pending: list[pa.Table] = []
    commit = Transaction.commit_transaction
    exporting = False

    def export_first(transaction: Transaction) -> Table:
        nonlocal exporting
        if pending and not exporting:
            exporting = True
            try:
                exporter = SalesTable.open(config, source="smartgo", create=False)
                exporter.upsert(pending.pop(0), run_id="concurrent")
            finally:
                exporting = False
        return commit(transaction)

    monkeypatch.setattr(Transaction, "commit_transaction", export_first)
    return pending


def test_compaction_loses_no_rows_of_a_concurrent_export_commit(
    config: TableConfig, export_before_each_compaction_commit: list[pa.Table]
) -> None:
    table = export_in_batches(config, "store-a", NOVEMBER, batches=4)
    # The export changes a sale in one of the small files (rewriting that file) and adds one.
    export_before_each_compaction_commit.append(
        batch([sale(2, price="77.00"), sale(500)], run_id="concurrent")
    )

    report = compact(config)

    rows = rows_by_key(reloaded(table))
    assert export_before_each_compaction_commit == []
    assert rows.num_rows == 21
    assert len(set(keys(rows))) == 21
    changed = rows.filter(pc.equal(rows["sale_id"], "2"))
    assert changed["sale_price"].to_pylist() == [pytest.approx(77)]
    assert "500" in rows["sale_id"].to_pylist()
    # The first commit failed pyiceberg's validation; the second, planned again, took the
    # export's files in.
    assert [(p.attempts, p.files_before, p.files_after) for p in report.compacted] == [(2, 5, 1)]
    assert files_by_partition(reloaded(table)) == {A_NOVEMBER: 1}


def test_an_export_to_another_partition_meanwhile_is_kept_without_a_second_attempt(
    config: TableConfig, export_before_each_compaction_commit: list[pa.Table]
) -> None:
    table = export_in_batches(config, "store-a", NOVEMBER, batches=3)
    export_before_each_compaction_commit.append(batch([sale(700, "store-b")], run_id="concurrent"))

    report = compact(config)

    assert [(p.partition, p.attempts) for p in report.compacted] == [(A_NOVEMBER, 1)]
    rows = rows_by_key(reloaded(table))
    assert keys(rows) == [
        *(("store-a", str(n)) for n in sorted(range(15), key=str)),
        ("store-b", "700"),
    ]


def test_a_partition_that_conflicts_at_every_attempt_is_skipped_and_keeps_its_rows(
    config: TableConfig, export_before_each_compaction_commit: list[pa.Table]
) -> None:
    config = config.model_copy(update={"commit_attempts": 2})
    table = export_in_batches(config, "store-a", NOVEMBER, batches=3)
    export_before_each_compaction_commit.extend(
        [batch([sale(600)], run_id="concurrent"), batch([sale(601)], run_id="concurrent")]
    )

    report = compact(config)

    assert (report.compacted, report.skipped) == ([], [A_NOVEMBER])
    rows = rows_by_key(reloaded(table))
    assert rows.num_rows == 17
    assert len(set(keys(rows))) == 17
    assert files_by_partition(reloaded(table)) == {A_NOVEMBER: 5}


# --- the command --------------------------------------------------------------------------------


def write_config(tmp_path: Path, catalog: str) -> Path:
    path = tmp_path / "smartgo-exporter.toml"
    path.write_text(
        '[source]\ntype = "sql"\nurl = "sqlite:///sales.db"\ntable = "sales"\n\n'
        f"[table.catalog]\n{catalog}\n"
    )
    return path


def test_compact_command_prints_files_before_and_after_and_snapshots_expired(
    config: TableConfig, tmp_path: Path
) -> None:
    export_in_batches(config, "store-a", NOVEMBER, batches=6)
    catalog = "\n".join(f'{key} = "{value}"' for key, value in config.catalog.items())

    result = CliRunner().invoke(
        app, ["compact", "--config", str(write_config(tmp_path, catalog)), "--keep-days", "0"]
    )

    assert result.exit_code == 0, result.output
    assert A_NOVEMBER in result.output
    assert "6 → 1" in result.output
    assert "compacted 1 of 1 partitions" in result.output
    assert "expired 6 older than 0 days" in result.output


def test_compact_command_refuses_an_s3tables_catalog_with_a_message(tmp_path: Path) -> None:
    catalog = (
        'type = "s3tables"\n'
        'warehouse = "arn:aws:s3tables:eu-west-1:111122223333:bucket/pricing-intelligence"'
    )

    result = CliRunner().invoke(app, ["compact", "--config", str(write_config(tmp_path, catalog))])

    assert result.exit_code == 2
    assert "S3 Tables compacts its tables" in result.output
