"""A table state's data files by tenant, read from its manifests as pyiceberg would plan them."""

from datetime import datetime, timedelta

import pyarrow as pa
import pytest
from pyiceberg.manifest import ManifestFile
from pyiceberg.table import FileScanTask, Table
from pyiceberg.transforms import IdentityTransform

from smartgo_exporter.config import TableConfig
from smartgo_exporter.schema import EmbeddingStatus, SaleRow, rows_to_arrow
from smartgo_exporter.sinks.iceberg import SalesTable
from smartgo_exporter.sinks.manifests import files_by_tenant
from tests.test_iceberg_sink import DAY, config, sale

__all__ = ["config"]  # the fixture, used by `table`


@pytest.fixture
def table(config: TableConfig) -> SalesTable:
    return SalesTable.open(config, source="smartgo")


def rows(tenant: str, ids: range, *, day: datetime = DAY, source: str = "smartgo") -> pa.Table:
    sales = [SaleRow(sale(i, tenant, day=day), EmbeddingStatus.NO_IMAGE, None) for i in ids]
    return rows_to_arrow(sales, source=source, run_id="run-1", exported_at=DAY)


def planned(table: Table, tenant: str) -> set[str]:
    return {
        task.file.file_path
        for task in table.scan().plan_files()
        if task.file.partition[0] == tenant
    }


def paths(files: dict[str, list[FileScanTask]], tenant: str) -> set[str]:
    return {task.file.file_path for task in files.get(tenant, [])}


def test_each_tenants_files_are_those_pyiceberg_plans_for_it(table: SalesTable) -> None:
    table.upsert(rows("store-a", range(10)), run_id="run-1")
    table.upsert(rows("store-b", range(10), day=DAY - timedelta(days=40)), run_id="run-2")
    table.upsert(rows("store-a", range(5, 20)), run_id="run-3")  # rewrites a file

    files = files_by_tenant(table.table)

    assert set(files) == {"store-a", "store-b"}
    for tenant in files:
        assert paths(files, tenant) == planned(table.table, tenant)


def test_only_the_tenants_asked_for_are_read(table: SalesTable) -> None:
    table.upsert(rows("store-a", range(10)), run_id="run-1")
    table.upsert(rows("store-b", range(10)), run_id="run-2")

    files = files_by_tenant(table.table, ["store-b"])

    assert set(files) == {"store-b"}
    assert paths(files, "store-b") == planned(table.table, "store-b")


def test_a_file_of_another_source_is_left_out_when_a_source_is_given(table: SalesTable) -> None:
    other = SalesTable(table.table, source="other-till")
    table.upsert(rows("store-a", range(10)), run_id="run-1")
    other.upsert(rows("store-a", range(100, 110), source="other-till"), run_id="run-2")

    ours = files_by_tenant(table.table, ["store-a"], "smartgo")
    everyone = files_by_tenant(table.table, ["store-a"])

    assert len(paths(everyone, "store-a")) == 2
    assert len(paths(ours, "store-a")) == 1


def test_a_table_of_two_partition_specs_is_planned_by_pyiceberg_alike(
    table: SalesTable,
) -> None:
    table.upsert(rows("store-a", range(10)), run_id="run-1")
    with table.table.update_spec() as spec:
        spec.add_field("currency", IdentityTransform(), "currency")
    table.upsert(rows("store-b", range(10)), run_id="run-2")

    files = files_by_tenant(table.table)

    assert paths(files, "store-a") == planned(table.table, "store-a")
    assert paths(files, "store-b") == planned(table.table, "store-b")


def test_a_manifest_read_before_is_not_read_again(
    table: SalesTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Manifests never change, so after a commit only the ones it wrote are read."""
    table.upsert(rows("store-a", range(10)), run_id="run-1")
    files_by_tenant(table.table)
    table.upsert(rows("store-b", range(10)), run_id="run-2")
    read: list[str] = []
    fetch = ManifestFile.fetch_manifest_entry
    monkeypatch.setattr(
        ManifestFile,
        "fetch_manifest_entry",
        lambda self, *a, **k: read.append(self.manifest_path) or fetch(self, *a, **k),
    )

    files = files_by_tenant(table.table)

    snapshot = table.table.current_snapshot()
    assert snapshot is not None
    written = [
        m.manifest_path
        for m in snapshot.manifests(table.table.io)
        if m.added_snapshot_id == snapshot.snapshot_id
    ]
    assert sorted(read) == sorted(written)
    assert set(files) == {"store-a", "store-b"}
