"""The similar-sales index on a real Iceberg table (SQLite catalog), with vectors made up:
what it holds after each kind of change to the table, and what a search returns."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from numpy.typing import NDArray
from pyiceberg.expressions import EqualTo
from structlog.testing import capture_logs

from smartgo_exporter.config import IndexConfig, TableConfig
from smartgo_exporter.index import SalesIndex, sync_after_export, sync_indexes
from smartgo_exporter.index_storage import IndexFolder
from smartgo_exporter.index_table import tenant_files
from smartgo_exporter.sales import Sale
from smartgo_exporter.schema import Embedding, SaleRow, rows_to_arrow
from smartgo_exporter.sinks import manifests
from smartgo_exporter.sinks.iceberg import SalesTable
from tests.test_iceberg_sink import batch, failed_batch, previous_version_table, sale

DIM = 16
MODEL = "test-model"


def vectors(count: int, seed: int) -> NDArray[np.float32]:
    values = np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def rows(
    ids: range, vectors: NDArray[np.float32], *, product: str | None = None, tenant: str = "t1"
) -> pa.Table:
    sales = [
        SaleRow(
            Sale(
                sale_id=str(number),
                tenant_id=tenant,
                product_id=product or f"p{number}",
                sold_at=datetime(2026, 10, 1 + number % 28, 12, tzinfo=UTC),
                sale_price=Decimal("10.00"),
                currency="EUR",
            ),
            "ok",
            Embedding(vector, MODEL, "0" * 64, 1, 1),
        )
        for number, vector in zip(ids, vectors, strict=True)
    ]
    return rows_to_arrow(sales, source="smartgo", run_id="r", exported_at=datetime.now(UTC))


@pytest.fixture
def table(tmp_path: Path) -> tuple[SalesTable, TableConfig, IndexConfig]:
    config = TableConfig(
        catalog={
            "type": "sql",
            "uri": f"sqlite:///{tmp_path / 'catalog.db'}",
            "warehouse": f"file://{tmp_path / 'warehouse'}",
        }
    )
    return SalesTable.open(config, source="smartgo"), config, IndexConfig(dtype="f32")


def calls_of(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[tuple[Any, ...]]:
    """The arguments of each call of `owner.name` from now on, which still does what it did."""
    calls: list[tuple[Any, ...]] = []
    original = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def stored_sales(config: IndexConfig, table_config: TableConfig, tenant: str) -> int:
    return len(SalesIndex.load(config, table_config, tenant, MODEL, DIM))


def synced(table: SalesTable, config: IndexConfig, tenant: str = "t1") -> SalesIndex:
    index = SalesIndex.empty(config, tenant, MODEL, DIM)
    index.sync(table.table)
    return index


def test_a_product_sold_many_times_and_left_out_does_not_crowd_out_the_others(
    table: tuple[SalesTable, TableConfig, IndexConfig],
) -> None:
    sales, _, config = table
    query = vectors(1, 0)[0]
    near = np.repeat(query[None, :], 40, axis=0) + 0.01 * vectors(40, 1)
    sales.upsert(rows(range(40), near, product="twin"), run_id="r1")
    sales.upsert(rows(range(100, 160), vectors(60, 2)), run_id="r2")

    found = synced(sales, config).search(query, 5, exclude_products=["twin"])

    assert len(found) == 5
    assert all(neighbour.sale["product_id"] != "twin" for neighbour in found)


def test_an_upsert_replaces_the_rows_of_the_files_it_rewrote(
    table: tuple[SalesTable, TableConfig, IndexConfig],
) -> None:
    sales, _, config = table
    sales.upsert(rows(range(20), vectors(20, 3)), run_id="r1")
    index = synced(sales, config)
    changed = vectors(5, 4)
    sales.upsert(rows(range(5), changed), run_id="r2")

    report = index.sync(sales.table)

    assert report.removed >= 5
    assert len(index) == 20
    assert sorted(index.sales["sale_id"].to_pylist(), key=int) == [str(n) for n in range(20)]
    [best] = index.search(changed[0], 1)
    assert best.sale["sale_id"] == "0"
    assert best.similarity == pytest.approx(1.0, abs=1e-5)


def test_a_stored_index_loads_as_it_was_saved_and_catches_up_from_there(
    table: tuple[SalesTable, TableConfig, IndexConfig],
) -> None:
    sales, table_config, config = table
    sales.upsert(rows(range(10), vectors(10, 5)), run_id="r1")
    [first] = sync_indexes(config, table_config, sales.table, MODEL, DIM)
    sales.upsert(rows(range(10, 15), vectors(5, 6)), run_id="r2")

    stored = SalesIndex.load(config, table_config, "t1", MODEL, DIM)
    assert (len(stored), stored.snapshot_id) == (10, first.snapshot_id)
    report = stored.sync(sales.table)
    assert (report.added, report.removed, len(stored)) == (5, 0, 15)


def test_syncing_every_tenant_plans_the_table_once_and_reads_each_its_own_files(
    table: tuple[SalesTable, TableConfig, IndexConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    sales, table_config, config = table
    for number, tenant in enumerate(("t1", "t2", "t3")):
        ids = range(10 * number, 10 * number + 10)
        sales.upsert(rows(ids, vectors(10, 20 + number), tenant=tenant), run_id=f"r{number}")
    plans = calls_of(monkeypatch, manifests, "files_by_tenant")

    reports = sync_indexes(config, table_config, sales.table, MODEL, DIM)

    assert len(plans) == 1
    assert [(r.tenant, r.added) for r in reports] == [("t1", 10), ("t2", 10), ("t3", 10)]
    for report in reports:
        assert report.files_read == len(tenant_files(sales.table, report.tenant))


def test_a_tenant_deleted_from_the_table_empties_its_index(
    table: tuple[SalesTable, TableConfig, IndexConfig],
) -> None:
    sales, _, config = table
    sales.upsert(rows(range(10), vectors(10, 7)), run_id="r1")
    sales.upsert(rows(range(10, 20), vectors(10, 8), tenant="t2"), run_id="r2")
    index = synced(sales, config)

    sales.table.delete(EqualTo("tenant_id", "t1"))
    index.sync(sales.table)

    assert len(index) == 0
    assert index.search(vectors(1, 9)[0], 5) == []
    assert len(synced(sales, config, "t2")) == 10


def test_an_index_stored_with_another_precision_is_rebuilt_not_misread(
    table: tuple[SalesTable, TableConfig, IndexConfig],
) -> None:
    sales, table_config, config = table
    sales.upsert(rows(range(10), vectors(10, 10)), run_id="r1")
    sync_indexes(config, table_config, sales.table, MODEL, DIM)

    halved = IndexConfig(dtype="f16")
    assert len(SalesIndex.load(halved, table_config, "t1", MODEL, DIM)) == 0
    [report] = sync_indexes(halved, table_config, sales.table, MODEL, DIM)
    assert report.added == 10


def test_an_index_follows_a_table_whose_older_files_lack_the_photo_failure_columns(
    tmp_path: Path,
) -> None:
    config = TableConfig(
        catalog={
            "type": "sql",
            "uri": f"sqlite:///{tmp_path / 'catalog.db'}",
            "warehouse": f"file://{tmp_path / 'warehouse'}",
        }
    )
    previous_version_table(config, [sale(n) for n in range(4)])
    sales = SalesTable.open(config, source="smartgo")
    sales.upsert(batch([sale(n) for n in range(10, 13)]), run_id="r2")
    sales.upsert(failed_batch([sale(20)], failures=1), run_id="r3")

    index = SalesIndex.empty(IndexConfig(dtype="f32"), "store-a", "model-a", 8)
    index.sync(sales.table)

    assert sorted(index.sales["sale_id"].to_pylist(), key=int) == [
        "0",
        "1",
        "2",
        "3",
        "10",
        "11",
        "12",
    ]


def test_an_export_end_after_which_nothing_changed_neither_plans_the_table_nor_loads_an_index(
    table: tuple[SalesTable, TableConfig, IndexConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    sales, table_config, config = table
    sales.upsert(rows(range(10), vectors(10, 30)), run_id="r1")
    sales.upsert(rows(range(10, 20), vectors(10, 31), tenant="t2"), run_id="r2")
    sync_after_export(config, table_config, sales.table, MODEL, DIM)
    assert [stored_sales(config, table_config, tenant) for tenant in ("t1", "t2")] == [10, 10]
    plans = calls_of(monkeypatch, manifests, "files_by_tenant")
    loads = calls_of(monkeypatch, SalesIndex, "load")

    sync_after_export(config, table_config, sales.table, MODEL, DIM)

    assert (plans, loads) == ([], [])


def test_a_tenant_whose_first_sales_came_after_an_export_end_is_indexed_at_the_next(
    table: tuple[SalesTable, TableConfig, IndexConfig],
) -> None:
    sales, table_config, config = table
    sales.upsert(rows(range(10), vectors(10, 32)), run_id="r1")
    sync_after_export(config, table_config, sales.table, MODEL, DIM)
    sales.upsert(rows(range(10, 17), vectors(7, 33), tenant="t2"), run_id="r2")

    sync_after_export(config, table_config, sales.table, MODEL, DIM)

    assert stored_sales(config, table_config, "t2") == 7


def test_an_index_that_failed_to_save_is_synced_at_the_next_export_end_though_nothing_changed(
    table: tuple[SalesTable, TableConfig, IndexConfig],
) -> None:
    sales, table_config, config = table
    sales.upsert(rows(range(10), vectors(10, 34)), run_id="r1")
    sales.upsert(rows(range(10, 20), vectors(10, 35), tenant="t2"), run_id="r2")
    folder = Path(IndexFolder.of(config, table_config, "t2", MODEL).path.removeprefix("file://"))
    folder.parent.mkdir(parents=True)
    folder.write_text("a file where t2's index folder goes")  # root may write anywhere else
    with capture_logs() as logs:
        sync_after_export(config, table_config, sales.table, MODEL, DIM)
    assert "index_update_failed" in [log["event"] for log in logs]
    folder.unlink()

    sync_after_export(config, table_config, sales.table, MODEL, DIM)

    assert [stored_sales(config, table_config, tenant) for tenant in ("t1", "t2")] == [10, 10]


def test_an_export_end_in_another_precision_rebuilds_the_indexes_though_nothing_changed(
    table: tuple[SalesTable, TableConfig, IndexConfig],
) -> None:
    sales, table_config, config = table
    sales.upsert(rows(range(10), vectors(10, 36)), run_id="r1")
    sync_after_export(config, table_config, sales.table, MODEL, DIM)
    halved = IndexConfig(dtype="f16")

    sync_after_export(halved, table_config, sales.table, MODEL, DIM)

    assert stored_sales(halved, table_config, "t1") == 10


def test_a_rebuild_starts_every_index_from_empty_though_an_export_end_synced_them(
    table: tuple[SalesTable, TableConfig, IndexConfig],
) -> None:
    sales, table_config, config = table
    sales.upsert(rows(range(10), vectors(10, 37)), run_id="r1")
    sales.upsert(rows(range(10, 13), vectors(3, 38), tenant="t2"), run_id="r2")
    sync_after_export(config, table_config, sales.table, MODEL, DIM)

    reports = sync_indexes(config, table_config, sales.table, MODEL, DIM, rebuild=True)

    assert [(report.tenant, report.added) for report in reports] == [("t1", 10), ("t2", 3)]


def test_an_export_end_syncs_past_a_mark_torn_by_a_crash(
    table: tuple[SalesTable, TableConfig, IndexConfig],
) -> None:
    sales, table_config, config = table
    sales.upsert(rows(range(10), vectors(10, 39)), run_id="r1")
    sync_after_export(config, table_config, sales.table, MODEL, DIM)
    sales.upsert(rows(range(10, 15), vectors(5, 40)), run_id="r2")
    IndexFolder.of_model(config, table_config, MODEL).write("synced.json", b'{"snapshot_')

    sync_after_export(config, table_config, sales.table, MODEL, DIM)

    assert stored_sales(config, table_config, "t1") == 15
