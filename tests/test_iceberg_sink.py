"""The table: idempotent upserts on (source, tenant_id, sale_id), one snapshot per batch."""

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.schema import Schema
from pyiceberg.table import FileScanTask
from structlog.testing import capture_logs

from smartgo_exporter.config import TableConfig
from smartgo_exporter.sales import Sale
from smartgo_exporter.schema import (
    ICEBERG_SCHEMA,
    Embedding,
    EmbeddingStatus,
    SaleRow,
    rows_to_arrow,
)
from smartgo_exporter.sinks.catalog import open_catalog
from smartgo_exporter.sinks.iceberg import (
    PARTITION_SPEC,
    RUN_ID_PROPERTY,
    SORT_ORDER,
    TABLE_PROPERTIES,
    SalesTable,
    add_missing_columns,
)
from smartgo_exporter.sinks.reconciliation import Reconciliation

DAY = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def config(tmp_path: Path) -> TableConfig:
    return TableConfig(
        catalog={
            "type": "sql",
            "uri": f"sqlite:///{tmp_path}/catalog.db",
            "warehouse": f"file://{tmp_path}/warehouse",
        }
    )


def sale(sale_id: int, tenant: str = "store-a", price: str = "10.00", day: datetime = DAY) -> Sale:
    return Sale(
        sale_id=str(sale_id),
        tenant_id=tenant,
        product_id=f"SKU-{sale_id}",
        sold_at=day + timedelta(minutes=sale_id),
        sale_price=Decimal(price),
        currency="EUR",
        image_url=f"http://photos/{sale_id}.jpg",
    )


def batch(sales: Sequence[Sale], run_id: str = "run-1") -> pa.Table:
    vector = np.full(8, 1 / np.sqrt(8), dtype=np.float32)
    rows = [
        SaleRow(s, EmbeddingStatus.OK, Embedding(vector, "model-a", "00" * 32, 64, 64))
        for s in sales
    ]
    return rows_to_arrow(rows, source="smartgo", run_id=run_id, exported_at=DAY)


PHOTO_FAILURE_COLUMNS = ["photo_failures", "photo_failed_at"]
"""The columns this version added: a table of the previous version lacks them."""


def previous_version_table(config: TableConfig, sales: Sequence[Sale]) -> None:
    """The table as the previous version created and wrote it: without the photo failure
    columns, holding these sales (in one data file)."""
    catalog = open_catalog(config)
    catalog.create_namespace(config.namespace)
    older = Schema(*[f for f in ICEBERG_SCHEMA.fields if f.name not in PHOTO_FAILURE_COLUMNS])
    table = catalog.create_table(
        (config.namespace, config.name),
        schema=older,
        partition_spec=PARTITION_SPEC,
        sort_order=SORT_ORDER,
        properties=TABLE_PROPERTIES,
    )
    table.append(batch(sales, run_id="previous").drop_columns(PHOTO_FAILURE_COLUMNS))


def failed_batch(sales: Sequence[Sale], failures: int, run_id: str = "run-1") -> pa.Table:
    rows = [
        SaleRow(s, EmbeddingStatus.failed("http_404"), failures=failures, failed_at=DAY)
        for s in sales
    ]
    return rows_to_arrow(rows, source="smartgo", run_id=run_id, exported_at=DAY)


def all_rows(table: SalesTable) -> pa.Table:
    table.table.refresh()
    return table.table.scan().to_arrow()


def test_upserting_the_same_batch_twice_keeps_one_row_per_sale(config: TableConfig) -> None:
    table = SalesTable.open(config, source="smartgo")
    rows = batch([sale(i) for i in range(50)])
    table.upsert(rows, run_id="run-1")
    table.upsert(rows, run_id="run-2")
    stored = all_rows(table)
    assert stored.num_rows == 50
    assert len(set(stored.column("sale_id").to_pylist())) == 50


def test_a_changed_sale_replaces_its_row_and_leaves_the_others(config: TableConfig) -> None:
    table = SalesTable.open(config, source="smartgo")
    table.upsert(batch([sale(i) for i in range(20)]), run_id="run-1")
    table.upsert(batch([sale(7, price="99.00")], run_id="run-2"), run_id="run-2")
    stored = all_rows(table)
    assert stored.num_rows == 20
    changed = stored.filter(pc.equal(stored["sale_id"], "7")).to_pylist()
    assert [(r["sale_price"], r["export_run_id"]) for r in changed] == [(Decimal("99.00"), "run-2")]
    assert set(
        stored.filter(pc.not_equal(stored["sale_id"], "7"))["export_run_id"].to_pylist()
    ) == {"run-1"}


def test_an_upsert_reads_only_the_files_whose_id_bounds_may_hold_its_keys(
    config: TableConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = SalesTable.open(config, source="smartgo")
    for start in (1000, 2000, 3000):
        table.upsert(batch([sale(i) for i in range(start, start + 100)]), run_id=f"run-{start}")
    read: set[str] = set()
    to_table = ArrowScan.to_table

    def counted(scan: ArrowScan, tasks: Iterable[FileScanTask]) -> pa.Table:
        tasks = list(tasks)
        read.update(task.file.file_path for task in tasks)
        return to_table(scan, tasks)

    monkeypatch.setattr(ArrowScan, "to_table", counted)
    table.upsert(batch([sale(2050, price="99.00")], run_id="run-4"), run_id="run-4")
    monkeypatch.undo()

    assert len(read) == 1  # of the 3 files, the one whose ids run from 2000 to 2099
    stored = all_rows(table)
    assert stored.num_rows == 300
    assert stored.filter(pc.equal(stored["sale_id"], "2050"))["sale_price"].to_pylist() == [
        Decimal("99.00")
    ]


def test_ids_of_other_lengths_are_found_by_the_bounds_they_sort_in(config: TableConfig) -> None:
    """Ids are text, so "10" sorts before "9": a file of 5 to 15 holds "10" to "15" and "5" to
    "9" between bounds "10" and "9"; every id must still be found and replaced."""
    table = SalesTable.open(config, source="smartgo")
    spans = (range(5, 16), range(95, 106), range(995, 1006))
    for number, ids in enumerate(spans):
        table.upsert(batch([sale(i) for i in ids]), run_id=f"run-{number}")
    everything = [i for ids in spans for i in ids]
    table.upsert(batch([sale(i, price="1.00") for i in everything]), run_id="again")

    stored = all_rows(table)
    assert sorted(map(int, stored["sale_id"].to_pylist())) == everything
    assert set(stored["sale_price"].to_pylist()) == {Decimal("1.00")}


def test_the_same_sale_id_in_two_stores_is_two_sales(config: TableConfig) -> None:
    table = SalesTable.open(config, source="smartgo")
    table.upsert(batch([sale(1001, "store-a"), sale(1001, "store-b")]), run_id="run-1")
    table.upsert(batch([sale(1001, "store-b", price="5.00")]), run_id="run-2")
    stored = all_rows(table).sort_by("tenant_id")
    assert stored.select(["tenant_id", "sale_price"]).to_pylist() == [
        {"tenant_id": "store-a", "sale_price": Decimal("10.00")},
        {"tenant_id": "store-b", "sale_price": Decimal("5.00")},
    ]


def test_each_batch_is_one_snapshot_tagged_with_its_run_id(config: TableConfig) -> None:
    table = SalesTable.open(config, source="smartgo")
    table.upsert(batch([sale(i) for i in range(10)]), run_id="run-1")
    table.upsert(batch([sale(3, price="1.00")]), run_id="run-2")
    snapshots = table.table.snapshots()
    assert [s.summary[RUN_ID_PROPERTY] for s in snapshots] == ["run-1", "run-2"]


def test_files_are_parquet_partitioned_by_tenant_and_month(config: TableConfig) -> None:
    table = SalesTable.open(config, source="smartgo")
    october = datetime(2026, 10, 31, 20, 0, tzinfo=UTC)
    table.upsert(
        batch([sale(1, "store-a"), sale(2, "store-b"), sale(3, "store-a", day=october)]),
        run_id="run-1",
    )
    files = list(table.table.scan().plan_files())
    partitions = sorted((f.file.partition[0], f.file.partition[1]) for f in files)
    # The month transform counts months since 1970-01: 2026-10 is 681, 2026-11 is 682.
    assert partitions == [("store-a", 681), ("store-a", 682), ("store-b", 682)]
    for task in files:
        data = Path(task.file.file_path.removeprefix("file://")).read_bytes()
        assert data[:4] == b"PAR1"
        assert data[-4:] == b"PAR1"
    assert all(
        "tenant_id=" in f.file.file_path and "sold_at_month=" in f.file.file_path for f in files
    )


def test_a_commit_that_loses_a_race_is_retried_against_the_new_state(
    config: TableConfig,
) -> None:
    ours = SalesTable.open(config, source="smartgo")
    theirs = SalesTable.open(config, source="smartgo")
    ours.upsert(batch([sale(0)]), run_id="run-0")
    theirs.table.refresh()
    theirs.upsert(batch([sale(i) for i in range(1, 30)], run_id="theirs"), run_id="theirs")
    # `ours` still holds the metadata from before their commit.
    ours.upsert(batch([sale(i) for i in range(20, 40)], run_id="ours"), run_id="ours")
    stored = all_rows(ours)
    ids = stored.column("sale_id").to_pylist()
    assert sorted(map(int, ids)) == list(range(40))
    assert len(ids) == 40


def test_a_sale_another_writer_moved_to_another_month_meanwhile_is_stored_once(
    config: TableConfig,
) -> None:
    """The other writer's file is in a month this commit does not touch: the race is still
    seen, and the re-planned commit replaces their row of the sale."""
    ours = SalesTable.open(config, source="smartgo")
    theirs = SalesTable.open(config, source="smartgo")
    ours.upsert(batch([sale(0)]), run_id="run-0")
    theirs.table.refresh()
    theirs.upsert(batch([sale(5, day=DAY - timedelta(days=40))]), run_id="theirs")
    # `ours` still holds the metadata from before their commit.
    ours.upsert(batch([sale(5)]), run_id="ours")

    stored = all_rows(ours).sort_by("sale_id")
    assert stored.column("sale_id").to_pylist() == ["0", "5"]
    assert stored.column("sold_at").to_pylist()[1] == sale(5).sold_at


def test_stored_rows_are_returned_only_for_the_keys_asked(config: TableConfig) -> None:
    table = SalesTable.open(config, source="smartgo")
    table.upsert(batch([sale(i) for i in range(10)]), run_id="run-1")
    stored = table.stored([("store-a", "3"), ("store-a", "404"), ("store-b", "3")])
    assert len(stored) == 1
    assert stored.row(("store-a", "3"))["sale_price"] == Decimal("10.00")
    vector = stored.vector(("store-a", "3"))
    assert vector is not None
    assert vector.dtype == np.float32
    assert vector.shape == (8,)


def test_a_lookup_within_a_sold_at_span_finds_only_the_sales_sold_in_it(
    config: TableConfig,
) -> None:
    table = SalesTable.open(config, source="smartgo")
    table.upsert(batch([sale(i) for i in range(10)]), run_id="run-1")
    keys = [("store-a", "3"), ("store-a", "7")]

    around_3 = table.stored(
        keys, sold_within=(DAY + timedelta(minutes=2), DAY + timedelta(minutes=4))
    )

    assert [key for key in keys if key in around_3] == [("store-a", "3")]


def test_lookups_of_one_month_see_this_writers_commits_at_once(config: TableConfig) -> None:
    """The month's files are planned once per table state: a commit made between two lookups
    is in the second, though the table is not reloaded between them."""
    table = SalesTable.open(config, source="smartgo")
    table.upsert(batch([sale(1)]), run_id="run-1")
    keys = [sale(1).key, sale(2).key]
    span = (DAY, DAY + timedelta(minutes=5))
    assert [key for key in keys if key in table.stored(keys, sold_within=span)] == [sale(1).key]

    table.upsert(batch([sale(2)]), run_id="run-2")

    assert [key for key in keys if key in table.stored(keys, sold_within=span)] == keys


def test_a_lookup_sees_another_writers_commit_once_its_refresh_interval_passed(
    config: TableConfig,
) -> None:
    table = SalesTable.open(config, source="smartgo")
    table.lookup_refresh_seconds = 0.2
    other_writer = SalesTable.open(config, source="smartgo")
    table.upsert(batch([sale(1)]), run_id="run-1")
    keys = [sale(1).key, sale(3).key]
    span = (DAY, DAY + timedelta(minutes=5))
    assert [key for key in keys if key in table.stored(keys, sold_within=span)] == [sale(1).key]

    other_writer.upsert(batch([sale(3)]), run_id="run-3")
    time.sleep(0.25)

    assert [key for key in keys if key in table.stored(keys, sold_within=span)] == keys


def test_lookups_within_a_refresh_interval_do_not_reload_the_table(
    config: TableConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload is a catalog round trip and a parse of all the table's metadata."""
    table = SalesTable.open(config, source="smartgo")
    table.upsert(batch([sale(i) for i in range(10)]), run_id="run-1")
    table.lookup_refresh_seconds = 60
    reloads: list[object] = []
    refresh = type(table.table).refresh
    monkeypatch.setattr(
        type(table.table), "refresh", lambda self: reloads.append(self) or refresh(self)
    )

    for i in range(10):
        table.stored([sale(i).key], sold_within=(DAY, DAY + timedelta(minutes=10)))

    assert reloads == []


def test_an_upsert_replaces_a_sale_whose_sold_at_moved_out_of_its_old_file(
    config: TableConfig,
) -> None:
    table = SalesTable.open(config, source="smartgo")
    table.upsert(batch([sale(i) for i in range(10)]), run_id="run-1")
    table.upsert(batch([sale(i) for i in range(100, 110)]), run_id="run-2")
    moved = sale(3, day=DAY + timedelta(days=40))  # next month: another partition

    table.upsert(batch([moved]), run_id="run-3")

    rows = all_rows(table)
    assert rows.num_rows == 20
    [row] = rows.filter(pc.equal(rows["sale_id"], "3")).to_pylist()
    assert row["sold_at"] == moved.sold_at


def test_an_older_table_gains_new_columns_without_rewriting_data(config: TableConfig) -> None:
    catalog = open_catalog(config)
    catalog.create_namespace(config.namespace)
    older = Schema(*[f for f in ICEBERG_SCHEMA.fields if f.name != "source_updated_at"])
    catalog.create_table((config.namespace, config.name), schema=older)
    table = SalesTable.open(config, source="smartgo")
    assert "source_updated_at" in table.table.schema().column_names
    assert table.table.current_snapshot() is None


def test_a_table_of_the_previous_version_gains_the_photo_failure_columns_and_keeps_its_rows(
    config: TableConfig,
) -> None:
    previous_version_table(config, [sale(i) for i in range(5)])

    table = SalesTable.open(config, source="smartgo")

    assert set(PHOTO_FAILURE_COLUMNS) <= set(table.table.schema().column_names)
    table.upsert(failed_batch([sale(3), sale(7)], failures=2), run_id="run-2")
    rows = all_rows(table).sort_by("sale_id")
    assert rows["sale_id"].to_pylist() == ["0", "1", "2", "3", "4", "7"]
    assert rows["photo_failures"].to_pylist() == [None, None, None, 2, None, 2]
    stored = table.stored([("store-a", "1"), ("store-a", "3")])
    assert stored.row(("store-a", "1"))["photo_failures"] is None
    assert stored.row(("store-a", "3"))["photo_failed_at"] == DAY


def test_two_runs_adding_the_same_columns_at_once_both_go_on(config: TableConfig) -> None:
    previous_version_table(config, [sale(0)])
    catalog = open_catalog(config)
    first, second = (catalog.load_table((config.namespace, config.name)) for _ in range(2))

    add_missing_columns(first)
    # `second` read the table before `first` changed its schema: its own change loses the race.
    with capture_logs() as logs:
        add_missing_columns(second)

    assert [entry["event"] for entry in logs] == ["schema_update_conflict"]
    assert set(PHOTO_FAILURE_COLUMNS) <= set(second.schema().column_names)
    reloaded = catalog.load_table((config.namespace, config.name))
    assert len(reloaded.schemas()) == 2  # the previous version's, and one evolution


def test_sql_reads_a_table_whose_files_predate_the_new_columns(config: TableConfig) -> None:
    previous_version_table(config, [sale(i) for i in range(3)])
    table = SalesTable.open(config, source="smartgo")
    table.upsert(failed_batch([sale(9)], failures=1), run_id="run-2")

    result = table.query(
        "SELECT count(*) AS n, count(photo_failures) AS failed FROM sales"
    ).to_pylist()

    assert result == [{"n": 4, "failed": 1}]


# --- reconciling a day: the rows the source no longer returns leave the table ---------------

WINDOW_START, WINDOW_END = DAY.replace(hour=0), DAY.replace(hour=0) + timedelta(days=1)


def day_read(
    returned: Sequence[Sale], tenants: Sequence[str] = (), rejected: Sequence[str] = ()
) -> Reconciliation:
    """What a complete read of DAY's window returned."""
    return Reconciliation(
        WINDOW_START,
        WINDOW_END,
        tuple(tenants),
        frozenset(s.key for s in returned),
        frozenset(rejected),
    )


def holding(config: TableConfig, sales: Sequence[Sale]) -> SalesTable:
    """The table with these sales upserted by run-1."""
    table = SalesTable.open(config, source="smartgo")
    table.upsert(batch(sales), run_id="run-1")
    return table


def keys_in(table: SalesTable) -> set[tuple[str, str]]:
    rows = all_rows(table)
    return set(zip(rows["tenant_id"].to_pylist(), rows["sale_id"].to_pylist(), strict=True))


def test_a_reconciled_commit_removes_the_days_rows_not_returned_and_says_how_many(
    config: TableConfig,
) -> None:
    sales = [sale(i) for i in range(10)]
    table = holding(config, sales)
    still = [s for s in sales if s.sale_id not in {"2", "7"}]

    removed = table.upsert(
        batch([sale(4, price="4.00")]), run_id="run-2", reconcile=day_read(still)
    )

    assert removed == 2
    assert keys_in(table) == {s.key for s in still}
    assert len(table.table.snapshots()) == 2  # the upsert and the removal: one snapshot


def test_days_reconciled_in_one_commit_each_say_how_many_of_their_rows_it_removed(
    config: TableConfig,
) -> None:
    next_day = DAY + timedelta(days=1)
    first, second = [sale(i) for i in range(4)], [sale(i, day=next_day) for i in range(10, 15)]
    table = holding(config, [*first, *second])
    second_read = Reconciliation(
        WINDOW_END, WINDOW_END + timedelta(days=1), (), frozenset(s.key for s in second[2:])
    )

    removed = table.upsert_days(
        batch([sale(20, day=next_day)]),
        run_ids=["run-2", "run-3"],
        reconcile=[day_read(first[1:]), second_read],
    )

    assert removed == [1, 2]
    assert keys_in(table) == {s.key for s in [*first[1:], *second[2:], sale(20)]}
    [_, snapshot] = table.table.snapshots()
    assert snapshot.summary is not None
    assert snapshot.summary[RUN_ID_PROPERTY] == "run-2,run-3"


def test_reconciling_a_day_leaves_other_days_tenants_and_sources_alone(
    config: TableConfig,
) -> None:
    table = SalesTable.open(config, source="smartgo")
    other_source = SalesTable.open(config, source="another-pos")
    on_the_day = [sale(1), sale(2, "store-b")]
    before, after = sale(3, day=WINDOW_START - timedelta(minutes=10)), sale(4, day=WINDOW_END)
    table.upsert(batch([*on_the_day, before, after]), run_id="run-1")
    other_source.upsert(
        rows_to_arrow(
            [SaleRow(sale(5), "no_image")], source="another-pos", run_id="x", exported_at=DAY
        ),
        run_id="x",
    )

    removed = table.upsert(batch([]), run_id="run-2", reconcile=day_read([], ["store-a"]))

    assert removed == 1
    assert keys_in(table) == {("store-b", "2"), before.key, after.key, ("store-a", "5")}


def test_a_rejected_rows_sale_is_kept_by_its_id(config: TableConfig) -> None:
    table = holding(config, [sale(1), sale(2)])

    removed = table.upsert(batch([]), run_id="run-2", reconcile=day_read([sale(1)], rejected=["2"]))

    assert removed == 0
    assert keys_in(table) == {sale(1).key, sale(2).key}


def test_a_reconciliation_with_nothing_gone_and_nothing_to_write_commits_nothing(
    config: TableConfig,
) -> None:
    sales = [sale(i) for i in range(5)]
    table = holding(config, sales)

    assert table.upsert(batch([]), run_id="run-2", reconcile=day_read(sales)) == 0

    table.table.refresh()
    assert len(table.table.snapshots()) == 1


def test_a_reconciliation_that_loses_a_race_removes_what_is_gone_from_the_new_state(
    config: TableConfig,
) -> None:
    ours = SalesTable.open(config, source="smartgo")
    theirs = SalesTable.open(config, source="smartgo")
    ours.upsert(batch([sale(i) for i in range(5)]), run_id="run-0")
    theirs.table.refresh()
    # Another writer rewrites the day's file meanwhile (a compaction, a run of another day).
    theirs.upsert(batch([sale(3, price="3.00"), sale(30)], run_id="theirs"), run_id="theirs")
    # `ours` still holds the metadata from before their commit.

    removed = ours.upsert(batch([]), run_id="ours", reconcile=day_read([sale(0), sale(1)]))

    assert removed == 4
    assert keys_in(ours) == {sale(0).key, sale(1).key}
