"""Backfills on Ray: the table and the run records the local runner produces, from a cluster.

The demo store (a SQLite sales database, real photos over HTTP, the real local model, a real
Iceberg table) is exported over the same days twice, once by each runner into its own
warehouse; the Ray runner runs on a local Ray instance of two CPUs, started once per session.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import ray

from smartgo_exporter.backfill import backfill
from smartgo_exporter.config import Settings
from smartgo_exporter.demo import DemoCatalog, DemoPaths, write_demo_config
from smartgo_exporter.index import SalesIndex
from smartgo_exporter.lookup import update_indexes
from smartgo_exporter.progress.sqlite import SqliteProgressStore
from smartgo_exporter.ray_runner import tenant_shards
from smartgo_exporter.run_records import RunCounts, RunRecord, RunStatus
from smartgo_exporter.runs import DayDone
from smartgo_exporter.sales import SALE_FIELDS
from smartgo_exporter.sinks.iceberg import BUSINESS_DATE_PROPERTY, RUN_ID_PROPERTY, SalesTable
from tests.demo_store import FIRST_DAY, table_rows
from tests.servers.refused import refused_port
from tests.test_export import days, settings_of

LAST_DAY = days()[-1]
COMPARED_COLUMNS = (
    *SALE_FIELDS,
    "image_sha256",
    "image_width",
    "image_height",
    "embedding_model",
    "embedding_dim",
    "embedding_status",
    "source",
    "photo_failures",
)
"""Every column but the embedding (compared within float tolerance) and the run's own id
and times (`photo_failed_at` is a run's start: only whether it is set is compared)."""


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[None]:
    """A local Ray of two CPUs for the session: the runner uses it, and leaves it running."""
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@dataclasses.dataclass
class Backfilled:
    paths: DemoPaths
    settings: Settings
    records: list[RunRecord]
    days_heard: list[DayDone]
    """What the backfill's `on_day` heard, in the order it heard it."""


def backfilled(
    store: tuple[DemoPaths, DemoCatalog],
    folder: Path,
    runner: str,
    *,
    write: bool = True,
    **overrides: object,
) -> Backfilled:
    """A fresh copy of the store's database with its own warehouse, backfilled by `runner`
    with the configuration's `overrides`."""
    paths = DemoPaths(folder)
    shutil.copy(store[0].sales_db, paths.sales_db)
    write_demo_config(paths)
    settings = settings_of(paths, **overrides)
    heard: list[DayDone] = []
    records = (
        backfill(settings, FIRST_DAY, LAST_DAY, runner=runner, on_day=heard.append) if write else []
    )
    return Backfilled(paths, settings, records, heard)


@pytest.fixture(scope="module")
def by_local(
    store: tuple[DemoPaths, DemoCatalog], tmp_path_factory: pytest.TempPathFactory
) -> Backfilled:
    return backfilled(store, tmp_path_factory.mktemp("local"), "local")


@pytest.fixture(scope="module")
def by_ray(
    store: tuple[DemoPaths, DemoCatalog],
    tmp_path_factory: pytest.TempPathFactory,
    ray_instance: None,
) -> Backfilled:
    return backfilled(store, tmp_path_factory.mktemp("ray"), "ray")


def sorted_rows(settings: Settings) -> pa.Table:
    return table_rows(settings).sort_by([("tenant_id", "ascending"), ("sale_id", "ascending")])


def by_day(records: list[RunRecord]) -> dict[date, RunRecord]:
    return {record.business_date: record for record in records}


def assert_same_tables(by_local: Backfilled, by_ray: Backfilled) -> None:
    local, on_ray = sorted_rows(by_local.settings), sorted_rows(by_ray.settings)
    assert on_ray.num_rows == local.num_rows > 0
    for column in COMPARED_COLUMNS:
        assert on_ray[column].to_pylist() == local[column].to_pylist(), column
    assert pc.is_null(on_ray["photo_failed_at"]).equals(pc.is_null(local["photo_failed_at"]))
    for ours, theirs in zip(
        on_ray["embedding"].to_pylist(), local["embedding"].to_pylist(), strict=True
    ):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def outcome(counts: RunCounts) -> RunCounts:
    """The counts that say what became of a day's sales. Not `model_inputs`: how many photos
    went to the model depends on which of a photo's sales a runner embedded first (a photo is
    sent once, then reused), and runners order batches differently."""
    return dataclasses.replace(counts, model_inputs=0)


def assert_same_records(local_records: list[RunRecord], ray_records: list[RunRecord]) -> None:
    """Every field of each day's record alike, but the run's own id and times."""
    local, on_ray = by_day(local_records), by_day(ray_records)
    assert list(on_ray) == list(local)
    compared = [f.name for f in dataclasses.fields(RunRecord) if f.name not in RUN_OWN_FIELDS]
    for day, record in on_ray.items():
        for name in compared:
            ours, theirs = getattr(record, name), getattr(local[day], name)
            if name == "counts":
                ours, theirs = outcome(ours), outcome(theirs)
            assert ours == theirs, (day, name)


def test_ray_writes_the_table_the_local_runner_writes(
    by_local: Backfilled, by_ray: Backfilled
) -> None:
    assert_same_tables(by_local, by_ray)


def test_ray_and_the_local_runner_leave_the_same_similar_sales_index(
    by_local: Backfilled, by_ray: Backfilled
) -> None:
    def indexed(backfilled: Backfilled) -> list[tuple[str, str]]:
        reports = update_indexes(backfilled.settings)
        assert reports
        assert all(report.added == report.removed == 0 for report in reports)  # synced already
        return sorted(
            (report.tenant, sale)
            for report in reports
            for sale in SalesIndex.load(
                backfilled.settings.index,
                backfilled.settings.table,
                report.tenant,
                report.model,
                report.dim,
            )
            .sales["sale_id"]
            .to_pylist()
        )

    assert indexed(by_ray) == indexed(by_local)


def test_ray_records_each_day_as_the_local_runner_does(
    by_local: Backfilled, by_ray: Backfilled
) -> None:
    local, on_ray = by_day(by_local.records), by_day(by_ray.records)
    assert list(on_ray) == days()
    for day, record in on_ray.items():
        assert record.status == local[day].status, day
        assert outcome(record.counts) == outcome(local[day].counts), day
        assert record.finished_at is not None
    assert {r.status for r in on_ray.values()} >= {RunStatus.SUCCEEDED, RunStatus.PARTIAL}
    stored = SqliteProgressStore(by_ray.paths.progress_db)
    try:
        for day, record in on_ray.items():
            assert [(r.run_id, r.status) for r in stored.runs_on(day)] == [
                (record.run_id, record.status)
            ]
    finally:
        stored.close()


def test_both_runners_report_each_day_as_its_run_is_recorded(
    by_local: Backfilled, by_ray: Backfilled
) -> None:
    for backfilled in (by_local, by_ray):
        heard = backfilled.days_heard
        assert sorted((done.record for done in heard), key=lambda r: r.business_date) == (
            backfilled.records
        )
        assert [done.days_done for done in heard] == list(range(1, len(days()) + 1))
        assert {done.days_total for done in heard} == {len(days())}


RUN_OWN_FIELDS = {"run_id", "started_at", "finished_at", "expires_at"}
"""What makes a run itself rather than its outcome: its id and its times."""


def test_both_runners_record_every_field_of_each_day_alike(
    by_local: Backfilled, by_ray: Backfilled
) -> None:
    assert sum(record.counts.rejected for record in by_local.records) > 0
    assert sum(record.counts.failed for record in by_local.records) > 0
    assert_same_records(by_local.records, by_ray.records)


def test_each_ray_snapshot_names_its_run_and_business_day(by_ray: Backfilled) -> None:
    table = SalesTable.open(by_ray.settings.table, source="smartgo").table
    day_of_run = {record.run_id: record.business_date.isoformat() for record in by_ray.records}
    summaries = [snapshot.summary for snapshot in table.snapshots()]
    assert {summary[RUN_ID_PROPERTY] for summary in summaries if summary} == {
        record.run_id for record in by_ray.records if record.counts.written
    }
    for summary in summaries:
        assert summary is not None
        assert summary[BUSINESS_DATE_PROPERTY] == day_of_run[summary[RUN_ID_PROPERTY]]


def test_a_broken_photo_is_recorded_on_ray_as_locally(
    by_local: Backfilled, by_ray: Backfilled
) -> None:
    local, on_ray = by_day(by_local.records), by_day(by_ray.records)
    photo_errors = 0
    for day, record in on_ray.items():
        assert record.failures == local[day].failures, day
        assert sorted(map(dataclasses.astuple, record.errors)) == sorted(
            map(dataclasses.astuple, local[day].errors)
        )
        photo_errors += sum(error.stage == "photo" for error in record.errors)
    assert photo_errors > 0
    assert sum(r.failures.get("photo:http_404", 0) for r in on_ray.values()) == photo_errors


def test_a_rerun_on_ray_reuses_every_embedding_defers_every_failed_photo_and_writes_nothing(
    by_ray: Backfilled,
) -> None:
    table = SalesTable.open(by_ray.settings.table, source="smartgo").table
    snapshots = len(table.snapshots())
    again = backfill(by_ray.settings, FIRST_DAY, LAST_DAY, runner="ray")
    embedded = sum(record.counts.embedded for record in by_ray.records)
    assert embedded > 0
    assert sum(record.counts.embedded for record in again) == 0
    assert sum(record.counts.reused for record in again) == embedded
    failed = sum(record.counts.failed for record in by_ray.records)
    assert sum(record.counts.deferred for record in again) == failed > 0
    assert sum(record.counts.failed for record in again) == 0
    assert sum(record.counts.written for record in again) == 0
    assert [r.status for r in again] == [r.status for r in by_ray.records]
    table.refresh()
    assert len(table.snapshots()) == snapshots


def test_retry_failed_on_ray_fetches_every_failed_photo_again(by_ray: Backfilled) -> None:
    failed = sum(record.counts.failed for record in by_ray.records)
    forced = backfill(by_ray.settings, FIRST_DAY, LAST_DAY, runner="ray", retry_failed=True)
    assert sum(record.counts.deferred for record in forced) == 0
    assert sum(record.counts.failed for record in forced) == failed > 0
    rows = table_rows(by_ray.settings)
    failures = rows.filter(pc.is_valid(rows["photo_failures"]))["photo_failures"]
    assert failures.to_pylist() == [2] * failed  # the same 404s, a second time in a row


def test_sales_voided_or_deleted_at_the_source_leave_both_runners_tables_alike(
    store: tuple[DemoPaths, DemoCatalog], tmp_path: Path, ray_instance: None
) -> None:
    runs: dict[str, Backfilled] = {}
    for runner in ("local", "ray"):
        (tmp_path / runner).mkdir()
        runs[runner] = backfilled(store, tmp_path / runner, runner)
    rows = table_rows(runs["local"].settings)
    voided, deleted = rows["sale_id"][0].as_py(), rows["sale_id"][1].as_py()
    for run in runs.values():
        # The POS gains a `voided` column, which the source reads under the field's own name.
        with sqlite3.connect(run.paths.sales_db) as db:
            db.execute("ALTER TABLE sales ADD COLUMN voided TEXT")
            db.execute("UPDATE sales SET voided = 'Y' WHERE id = ?", (int(voided),))
            db.execute("DELETE FROM sales WHERE id = ?", (int(deleted),))

    again = {
        runner: backfill(run.settings, FIRST_DAY, LAST_DAY, runner=runner)
        for runner, run in runs.items()
    }

    assert sum(record.counts.removed for record in again["ray"]) == 2
    assert sum(record.counts.voided for record in again["ray"]) == 1
    assert_same_records(again["local"], again["ray"])
    assert_same_tables(runs["local"], runs["ray"])
    assert {voided, deleted} & set(table_rows(runs["ray"].settings)["sale_id"].to_pylist()) == set()


def test_a_day_another_run_holds_is_left_alone_and_the_others_run(
    store: tuple[DemoPaths, DemoCatalog], tmp_path: Path, ray_instance: None
) -> None:
    fresh = backfilled(store, tmp_path, "ray", write=False)
    held = SqliteProgressStore(fresh.paths.progress_db)
    try:
        assert held.acquire_lease(f"window:smartgo:{FIRST_DAY}", "another-run", 600)
        records = backfill(fresh.settings, FIRST_DAY, LAST_DAY, runner="ray")
    finally:
        held.close()
    locked, *others = records
    assert locked.status is RunStatus.FAILED
    assert [error.reason for error in locked.errors] == ["locked"]
    assert locked.counts.sales == 0
    assert all(record.status is not RunStatus.FAILED for record in others)
    exported = set(table_rows(fresh.settings)["sold_at"].to_pylist())
    assert exported
    assert all(moment.date() != FIRST_DAY for moment in exported)


def in_tenant_shards(store: tuple[DemoPaths, DemoCatalog]) -> dict[str, object]:
    """Every tenant of the store named, and each day read by two tasks, one of two tenants."""
    return {"export": {"tenant_ids": list(store[1].tenant_ids)}, "ray": {"tenant_shards": 2}}


@pytest.fixture(scope="module")
def by_local_of_tenants(
    store: tuple[DemoPaths, DemoCatalog], tmp_path_factory: pytest.TempPathFactory
) -> Backfilled:
    """The local runner with the tenants named, which it reads in one go, day by day."""
    return backfilled(
        store, tmp_path_factory.mktemp("local-tenants"), "local", **in_tenant_shards(store)
    )


@pytest.fixture(scope="module")
def by_ray_in_shards(
    store: tuple[DemoPaths, DemoCatalog],
    tmp_path_factory: pytest.TempPathFactory,
    ray_instance: None,
) -> Backfilled:
    return backfilled(
        store, tmp_path_factory.mktemp("ray-shards"), "ray", **in_tenant_shards(store)
    )


def test_a_day_is_split_by_dealing_its_tenants_among_the_shards() -> None:
    assert tenant_shards(["a", "b", "c"], 2) == [("a", "c"), ("b",)]
    assert tenant_shards(["a", "b"], 5) == [("a",), ("b",)]


def test_a_day_of_one_tenant_or_of_every_tenant_is_not_split() -> None:
    assert tenant_shards(["a"], 4) == [("a",)]
    assert tenant_shards([], 4) == [()]  # every tenant: the source alone knows which
    assert tenant_shards(["a", "b"], 1) == [("a", "b")]


def test_ray_reading_each_day_in_tenant_shards_writes_the_table_the_local_runner_writes(
    store: tuple[DemoPaths, DemoCatalog],
    by_local_of_tenants: Backfilled,
    by_ray_in_shards: Backfilled,
) -> None:
    assert len(tenant_shards(list(store[1].tenant_ids), 2)) == 2
    assert_same_tables(by_local_of_tenants, by_ray_in_shards)
    assert set(table_rows(by_ray_in_shards.settings)["tenant_id"].to_pylist()) == set(
        store[1].tenant_ids
    )


def test_a_day_read_in_tenant_shards_is_one_run_with_the_local_runners_counts(
    by_local_of_tenants: Backfilled, by_ray_in_shards: Backfilled
) -> None:
    local, on_ray = by_day(by_local_of_tenants.records), by_day(by_ray_in_shards.records)
    assert list(on_ray) == days()
    assert sum(record.counts.sales for record in on_ray.values()) > 0
    for day, record in on_ray.items():
        assert record.status == local[day].status, day
        assert outcome(record.counts) == outcome(local[day].counts), day
        assert record.failures == local[day].failures, day
        # The shards' batches interleave, so the errors come in another order.
        assert sorted(map(dataclasses.astuple, record.errors)) == sorted(
            map(dataclasses.astuple, local[day].errors)
        )
    stored = SqliteProgressStore(by_ray_in_shards.paths.progress_db)
    try:
        for day, record in on_ray.items():
            assert [(r.run_id, r.status, r.counts) for r in stored.runs_on(day)] == [
                (record.run_id, record.status, record.counts)
            ]
    finally:
        stored.close()


def test_a_sale_deleted_from_each_shards_tenants_leaves_the_table_when_its_day_is_read_again(
    by_ray_in_shards: Backfilled, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    rows = table_rows(by_ray_in_shards.settings)
    first, second = tenant_shards(list(store[1].tenant_ids), 2)
    deleted = [
        rows.filter(pc.is_in(rows["tenant_id"], pa.array(shard)))["sale_id"][0].as_py()
        for shard in (first, second)
    ]
    with sqlite3.connect(by_ray_in_shards.paths.sales_db) as db:
        db.executemany("DELETE FROM sales WHERE id = ?", [(int(sale),) for sale in deleted])

    again = backfill(by_ray_in_shards.settings, FIRST_DAY, LAST_DAY, runner="ray")

    assert sum(record.counts.removed for record in again) == 2
    assert set(deleted) & set(table_rows(by_ray_in_shards.settings)["sale_id"].to_pylist()) == set()


def test_without_ray_the_command_says_how_to_install_it(tmp_path: Path) -> None:
    paths = DemoPaths(tmp_path)
    write_demo_config(paths)
    result = backfill_in_a_new_process(paths, "--runner", "ray", before="sys.modules['ray'] = None")
    assert result.returncode == 2, result.stderr
    assert "pip install 'smartgo-exporter[ray]'" in result.stderr
    assert not paths.warehouse.exists()


def test_a_ray_address_nothing_answers_at_fails_at_once_naming_it(tmp_path: Path) -> None:
    paths = DemoPaths(tmp_path)
    write_demo_config(paths)
    address = f"127.0.0.1:{refused_port()}"
    result = backfill_in_a_new_process(paths, "--runner", "ray", "--ray-address", address)
    assert result.returncode == 2, result.stderr
    assert f"cannot reach the Ray cluster at {address}" in result.stderr
    assert not paths.warehouse.exists()


def backfill_in_a_new_process(
    paths: DemoPaths, *options: str, before: str = ""
) -> subprocess.CompletedProcess[str]:
    """`backfill` of FIRST_DAY, run by the CLI in a process of its own, without this session's
    Ray; `before` is Python run first."""
    command = (
        f"import sys; {before}\n"
        "from smartgo_exporter.cli import app\n"
        f"app(['backfill', '-c', {str(paths.config)!r}, '--from', '{FIRST_DAY}',"
        f" '--to', '{FIRST_DAY}', *{list(options)!r}])"
    )
    return subprocess.run(
        [sys.executable, "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
