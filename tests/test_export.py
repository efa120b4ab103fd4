"""The whole export, end to end: a SQLite store, real photos over HTTP, the real local model and a
real Iceberg table. These tests state the guarantees of DESIGN.md.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import structlog

from smartgo_exporter import windows
from smartgo_exporter.config import Settings
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.demo import DemoCatalog, DemoPaths, PhotoState
from smartgo_exporter.embedders import Vector, load_embedder
from smartgo_exporter.errors import DayNotOver, EmbeddingError
from smartgo_exporter.pipeline import export
from smartgo_exporter.progress.sqlite import SqliteProgressStore
from smartgo_exporter.run_records import RunStatus
from smartgo_exporter.runs import DayDone
from smartgo_exporter.sinks.iceberg import RUN_ID_PROPERTY, SalesTable
from smartgo_exporter.sources import SaleBatch, load_source
from smartgo_exporter.windows import Window
from tests.demo_store import (
    DAYS,
    FIRST_DAY,
    age_photo_failures,
    copy_of_store,
    distinct_keys,
    table_rows,
)


def settings_of(paths: DemoPaths, **overrides: object) -> Settings:
    return load_config(paths.config, **overrides)


def days() -> list[date]:
    return [FIRST_DAY + timedelta(days=n) for n in range(DAYS)]


def valid_sales(catalog: DemoCatalog) -> int:
    return sum(sale.defect is None for sale in catalog.sales)


def test_a_day_lands_once_and_a_rerun_reuses_every_embedding(
    workspace: DemoPaths, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    settings = settings_of(workspace)
    first = export(settings, days())
    rows = table_rows(settings)
    assert rows.num_rows == valid_sales(store[1])
    second = export(settings, days())
    again = table_rows(settings)
    assert again.num_rows == rows.num_rows
    assert distinct_keys(again) == again.num_rows
    embedded_first = sum(r.counts.embedded for r in first)
    assert embedded_first > 0
    assert sum(r.counts.embedded for r in second) == 0
    assert sum(r.counts.reused for r in second) == embedded_first
    assert sum(r.counts.written for r in second) == 0


def test_a_photo_embedded_earlier_in_the_run_is_not_downloaded_again(workspace: DemoPaths) -> None:
    """A product sold again later in the run shows the same photo: one download, one embedding."""
    start, end = (
        windows.business_day(days()[0], "UTC").start,
        windows.business_day(days()[-1], "UTC").end,
    )
    with sqlite3.connect(workspace.sales_db) as db:
        urls = [
            url
            for (url,) in db.execute(
                "SELECT photo_url FROM sales WHERE photo_url IS NOT NULL"
                " AND sold_at >= ? AND sold_at < ?",
                (f"{start:%Y-%m-%d %H:%M:%S}", f"{end:%Y-%m-%d %H:%M:%S}"),
            )
        ]
    assert len(urls) > len(set(urls))  # the demo sells some products more than once

    with structlog.testing.capture_logs() as logs:
        records = export(settings_of(workspace, export={"batch_size": 10}), days())

    downloads = sum(entry["photos"] for entry in logs if entry["event"] == "photos_fetching")
    failed = sum(record.counts.failed for record in records)  # a broken link is tried again
    assert downloads <= len(set(urls)) + failed


def test_photos_handed_to_the_model_a_few_at_a_time_land_as_a_whole_batch_does(
    workspace: DemoPaths, store: tuple[DemoPaths, DemoCatalog], tmp_path: Path
) -> None:
    """`photos.part_bytes` bounds memory only: one photo per part lands the same table."""
    whole = export(settings_of(workspace), days())
    (tmp_path / "split").mkdir()
    split_paths = copy_of_store(store[0], tmp_path / "split")
    split = export(settings_of(split_paths, photos={"part_bytes": 1}), days())

    assert [r.counts for r in split] == [r.counts for r in whole]
    assert [sorted(map(dataclasses.astuple, r.errors)) for r in split] == [
        sorted(map(dataclasses.astuple, r.errors)) for r in whole
    ]
    by_key = [("tenant_id", "ascending"), ("sale_id", "ascending")]
    expected = table_rows(settings_of(workspace)).sort_by(by_key)
    got = table_rows(settings_of(split_paths)).sort_by(by_key)
    runs_own = {"export_run_id", "exported_at", "photo_failed_at", "embedding"}
    compared = [name for name in expected.column_names if name not in runs_own]
    assert got.select(compared).equals(expected.select(compared))
    assert got["embedding"].null_count == expected["embedding"].null_count
    vectors = [
        (a, b)
        for a, b in zip(
            got["embedding"].to_pylist(), expected["embedding"].to_pylist(), strict=True
        )
        if a is not None
    ]
    assert vectors
    assert all(np.allclose(a, b, atol=1e-5) for a, b in vectors)


class _CountingReads:
    """The settings' source, telling when it is asked for its second window."""

    def __init__(self, settings: Settings) -> None:
        self.source = load_source(settings.source)
        self.second_read = threading.Event()
        self.reads = 0

    def read(self, window: Window, batch_size: int, tenant_ids: list[str]) -> Iterator[SaleBatch]:
        self.reads += 1
        if self.reads == 2:
            self.second_read.set()
        return self.source.read(window, batch_size, tenant_ids)

    def close(self) -> None:
        self.source.close()


class _HeldUntil:
    """The settings' model, whose first call waits (at most 30 s) for `event`."""

    def __init__(self, settings: Settings, event: threading.Event) -> None:
        self.embedder = load_embedder(settings.embedder)
        self.model_id, self.dim = self.embedder.model_id, self.embedder.dim
        self.include_title = self.embedder.include_title
        self.event = event
        self.waited_for: bool | None = None

    def embed(
        self, images: Sequence[bytes], *, captions: Sequence[str | None] | None = None
    ) -> list[Vector | EmbeddingError]:
        if self.waited_for is None:
            self.waited_for = self.event.wait(30)
        return self.embedder.embed(images, captions=captions)


def test_the_next_day_is_read_while_the_day_before_is_still_in_the_model(
    workspace: DemoPaths, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    """A range keeps the pipeline full across days: a day of one batch no longer waits for the
    day before to be embedded and committed before its photos download."""
    settings = settings_of(workspace)
    source = _CountingReads(settings)
    embedder = _HeldUntil(settings, source.second_read)
    try:
        records = export(settings, days(), source=source, embedder=embedder)
    finally:
        source.close()

    assert embedder.waited_for is True  # the first day's photos were in the model meanwhile
    assert [record.business_date for record in records] == days()
    assert RunStatus.FAILED not in {record.status for record in records}
    rows = table_rows(settings)
    assert rows.num_rows == distinct_keys(rows) == valid_sales(store[1])


def test_a_range_of_small_days_lands_in_one_snapshot_with_each_day_recorded_apart(
    workspace: DemoPaths, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    """A commit costs about the same for ten rows as for ten thousand, so the days of a range
    share one; each day's record still counts only its own sales."""
    settings = settings_of(workspace)
    records = export(settings, days())

    table = SalesTable.open(settings.table, source="smartgo").table
    [snapshot] = table.snapshots()
    assert snapshot.summary is not None
    assert snapshot.summary[RUN_ID_PROPERTY].split(",") == [r.run_id for r in records]
    written_by = collections.Counter(table_rows(settings)["export_run_id"].to_pylist())
    for record in records:
        assert record.counts.written == written_by[record.run_id] > 0


def test_a_day_waiting_for_a_shared_commit_is_recorded_only_once_its_rows_are_in_the_table(
    workspace: DemoPaths,
) -> None:
    settings = settings_of(workspace)
    in_table_when_recorded: list[int] = []

    def recorded(done: DayDone) -> None:
        stored = SqliteProgressStore(settings.progress.path).runs_on(done.record.business_date)
        assert [r.status for r in stored] == [done.record.status]
        written_by = collections.Counter(table_rows(settings)["export_run_id"].to_pylist())
        in_table_when_recorded.append(written_by[done.record.run_id])

    records = export(settings, days(), on_day=recorded)

    assert in_table_when_recorded == [r.counts.written for r in records]
    assert all(in_table_when_recorded)


def test_rows_wait_no_longer_than_commit_seconds_for_a_commit(workspace: DemoPaths) -> None:
    """With a slow model a day's `commit_rows` take many minutes; a run killed before its
    commit redoes only what waited less than `commit_seconds`."""
    settings = settings_of(workspace, export={"commit_seconds": 1e-6, "batch_size": 10})
    [record] = export(settings, [FIRST_DAY])

    table = SalesTable.open(settings.table, source="smartgo").table
    assert len(table.snapshots()) > 1  # of one day whose rows fit one commit by commit_rows
    rows = table_rows(settings)
    assert rows.num_rows == distinct_keys(rows) == record.counts.written


def test_a_price_change_at_the_source_rewrites_exactly_that_row(workspace: DemoPaths) -> None:
    settings = settings_of(workspace)
    export(settings, days())
    before = table_rows(settings)
    with sqlite3.connect(workspace.sales_db) as db:
        sale_id = db.execute(
            "SELECT id FROM sales WHERE price IS NOT NULL AND CAST(price AS REAL) > 0 "
            "AND photo_url IS NOT NULL ORDER BY id LIMIT 1"
        ).fetchone()[0]
        db.execute("UPDATE sales SET price = '1234.56' WHERE id = ?", (sale_id,))
    records = export(settings, days())
    after = table_rows(settings)
    assert sum(r.counts.written for r in records) == 1
    assert sum(r.counts.embedded for r in records) == 0
    changed = after.filter(pc.equal(after["sale_id"], str(sale_id)))
    assert [str(p) for p in changed["sale_price"].to_pylist()] == ["1234.56"]
    assert changed["embedding_status"].to_pylist() == ["ok"]
    unchanged_before = before.filter(pc.not_equal(before["sale_id"], str(sale_id))).sort_by(
        "sale_id"
    )
    unchanged_after = after.filter(pc.not_equal(after["sale_id"], str(sale_id))).sort_by("sale_id")
    assert unchanged_after.equals(unchanged_before)


def test_a_title_changed_only_in_its_spaces_is_rewritten_as_given_and_keeps_its_embedding(
    workspace: DemoPaths,
) -> None:
    """What a re-run does to rows stored before titles were kept byte for byte (trimmed then)."""
    settings = settings_of(workspace)
    export(settings, days())
    with sqlite3.connect(workspace.sales_db) as db:
        sale_id, title = db.execute(
            "SELECT id, title FROM sales WHERE title IS NOT NULL AND photo_url IS NOT NULL"
            " AND currency <> 'EUU' AND CAST(price AS REAL) > 0 ORDER BY id LIMIT 1"
        ).fetchone()
        spaced = " " + title.replace(" ", "\u00a0", 1) + "  "
        db.execute("UPDATE sales SET title = ? WHERE id = ?", (spaced, sale_id))
    records = export(settings, days())
    rows = table_rows(settings)
    assert sum(r.counts.written for r in records) == 1
    assert sum(r.counts.embedded for r in records) == 0
    changed = rows.filter(pc.equal(rows["sale_id"], str(sale_id)))
    assert changed["title"].to_pylist() == [spaced]
    assert changed["embedding_status"].to_pylist() == ["ok"]


def test_broken_photos_and_bad_rows_are_recorded_and_the_rest_lands(
    workspace: DemoPaths, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    settings = settings_of(workspace)
    records = export(settings, days())
    catalog = store[1]
    rows = table_rows(settings)
    statuses = rows["embedding_status"].to_pylist()
    broken = sum(s.product.photo is PhotoState.BROKEN and s.defect is None for s in catalog.sales)
    assert statuses.count("failed:http_404") == broken > 0
    assert statuses.count("no_image") > 0
    assert sum(r.counts.rejected for r in records) == 3
    errors = [e for r in records for e in r.errors]
    assert {e.reason for e in errors if e.stage == "source"} == {"sale_price", "currency"}
    assert all(e.sale_id for e in errors)
    assert {r.status for r in records if r.counts.rejected} == {RunStatus.PARTIAL}
    failed = rows.filter(pc.starts_with(rows["embedding_status"], "failed:"))
    assert failed["embedding"].null_count == failed.num_rows


def photos_fetched(logs: list[dict[str, object]]) -> int:
    return sum(int(str(entry["photos"])) for entry in logs if entry["event"] == "photos_fetching")


def gone(settings: Settings) -> pa.Table:
    rows = table_rows(settings)
    return rows.filter(pc.equal(rows["embedding_status"], "failed:http_404"))


@contextlib.contextmanager
def photo_restored(store: tuple[DemoPaths, DemoCatalog], url: str) -> Iterator[None]:
    """The photo at `url`, which was gone (404), served again while the block runs."""
    photo = Path(store[0].photos, url.rsplit("/", 1)[1])
    shutil.copy(next(store[0].photos.glob("*.jpg")), photo)
    try:
        yield
    finally:
        photo.unlink()


def test_a_photo_that_is_gone_is_not_fetched_again_by_a_rerun_before_its_back_off(
    workspace: DemoPaths,
) -> None:
    settings = settings_of(workspace)
    first = export(settings, days())
    failed = gone(settings)
    assert failed.num_rows == sum(r.counts.failed for r in first) > 0

    with structlog.testing.capture_logs() as logs:
        second = export(settings, days())

    assert photos_fetched(logs) == 0  # every other photo is embedded already
    assert sum(r.counts.deferred for r in second) == failed.num_rows
    assert sum(r.counts.failed for r in second) == 0
    assert sum(r.counts.written for r in second) == 0
    assert gone(settings).sort_by("sale_id").equals(failed.sort_by("sale_id"))
    assert set(failed["photo_failures"].to_pylist()) == {1}
    assert set(failed["photo_failed_at"].to_pylist()) <= {r.started_at for r in first}


def test_a_photo_that_is_gone_is_fetched_again_once_its_back_off_has_passed(
    workspace: DemoPaths, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    settings = settings_of(workspace)
    export(settings, days())
    failed = gone(settings)
    restored = failed["image_url"][0].as_py()
    assert age_photo_failures(settings, timedelta(days=1)) == failed.num_rows

    with photo_restored(store, restored):
        again = export(settings, days())

    rows = table_rows(settings)
    fixed = rows.filter(pc.equal(rows["image_url"], restored))
    assert set(fixed["embedding_status"].to_pylist()) == {"ok"}
    assert fixed["photo_failures"].null_count == fixed["photo_failed_at"].null_count == len(fixed)
    still_gone = gone(settings)
    assert still_gone.num_rows == failed.num_rows - fixed.num_rows
    assert set(still_gone["photo_failures"].to_pylist()) == {2}
    assert set(still_gone["photo_failed_at"].to_pylist()) <= {r.started_at for r in again}
    assert sum(r.counts.deferred for r in again) == 0


def test_retry_failed_fetches_a_photo_that_is_gone_before_its_back_off(
    workspace: DemoPaths, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    settings = settings_of(workspace)
    export(settings, days())
    restored = gone(settings)["image_url"][0].as_py()

    with photo_restored(store, restored):
        again = export(settings, days(), retry_failed=True)

    rows = table_rows(settings)
    fixed = rows.filter(pc.equal(rows["image_url"], restored))
    assert set(fixed["embedding_status"].to_pylist()) == {"ok"}
    assert sum(r.counts.deferred for r in again) == 0


def test_files_are_parquet_partitioned_by_tenant_and_month(workspace: DemoPaths) -> None:
    settings = settings_of(workspace)
    export(settings, days())
    table = SalesTable.open(settings.table, source="smartgo").table
    files = [task.file for task in table.scan().plan_files()]
    assert files
    for data_file in files:
        with open(data_file.file_path.removeprefix("file://"), "rb") as parquet:
            assert parquet.read(4) == b"PAR1"
    spec = [(f.name, str(f.transform)) for f in table.spec().fields]
    assert spec == [("tenant_id", "identity"), ("sold_at_month", "month")]
    # Files are written per batch and partition, never one per sale.
    assert len(files) <= 3 * DAYS


def test_every_snapshot_names_the_run_that_wrote_it(workspace: DemoPaths) -> None:
    settings = settings_of(workspace)
    records = export(settings, days())
    table = SalesTable.open(settings.table, source="smartgo").table
    run_ids = {run for s in table.snapshots() for run in s.summary[RUN_ID_PROPERTY].split(",")}
    assert run_ids == {r.run_id for r in records}


def test_runs_are_recorded_with_counts_and_a_ninety_day_expiry(workspace: DemoPaths) -> None:
    settings = settings_of(workspace)
    records = export(settings, days())
    history = SqliteProgressStore(settings.progress.path).recent(10)
    assert {r.run_id for r in history} == {r.run_id for r in records}
    for record in history:
        assert record.status in (RunStatus.SUCCEEDED, RunStatus.PARTIAL)
        assert record.finished_at is not None
        assert record.expires_at - record.started_at == timedelta(days=90)
        assert record.counts.sales > 0


def test_without_a_date_the_days_since_the_last_success_are_caught_up(
    workspace: DemoPaths,
) -> None:
    settings = settings_of(workspace, export={"catch_up_days": 366})
    earlier = export(settings, days())
    last_success = max(r.business_date for r in earlier if r.status is RunStatus.SUCCEEDED)
    exported = [r.business_date for r in export(settings)]
    yesterday = windows.yesterday("UTC")
    assert exported == [
        last_success + timedelta(days=n) for n in range(1, (yesterday - last_success).days + 1)
    ]


def test_a_day_not_over_yet_is_refused_before_anything_is_read_or_recorded(
    workspace: DemoPaths,
) -> None:
    settings = settings_of(workspace)
    today = windows.yesterday(settings.export.timezone) + timedelta(days=1)
    with pytest.raises(DayNotOver, match=f"{today} is not over yet"):
        export(settings, [FIRST_DAY, today])
    assert not settings.progress.path.exists()


def test_an_unreachable_database_fails_the_run_and_records_it(workspace: DemoPaths) -> None:
    settings = settings_of(
        workspace,
        source={
            "url": "postgresql+psycopg://nobody@127.0.0.1:1/none",
            "connect_timeout_seconds": 2,
        },
    )
    records = export(settings, days())
    assert [r.status for r in records] == [RunStatus.FAILED]
    assert "127.0.0.1" in records[0].message
    stored = SqliteProgressStore(settings.progress.path).runs_on(FIRST_DAY)
    assert [r.status for r in stored] == [RunStatus.FAILED]


def test_an_export_killed_mid_run_then_rerun_holds_each_sale_once(
    workspace: DemoPaths, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    settings = settings_of(workspace, export={"batch_size": 10, "commit_rows": 10})
    script = (
        "import sys; from datetime import date, timedelta\n"
        "from smartgo_exporter import export, load_config\n"
        f"days = [date({FIRST_DAY.year}, {FIRST_DAY.month}, {FIRST_DAY.day}) "
        f"+ timedelta(days=n) for n in range({DAYS})]\n"
        "export(load_config(sys.argv[1], export={'batch_size': 10, 'commit_rows': 10,"
        " 'lease_seconds': 3}), days)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(workspace.config)])
    deadline = time.monotonic() + 120
    try:
        while _snapshots(settings) < 2:
            assert child.poll() is None, "the export ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert 0 < table_rows(settings).num_rows < valid_sales(store[1])
    # The killed run's hold on its day lapses after lease_seconds; the re-run waits for that.
    export(settings_of(workspace, export={"lock_wait_seconds": 30}), days())
    rows = table_rows(settings)
    assert rows.num_rows == distinct_keys(rows) == valid_sales(store[1])


def _snapshots(settings: Settings) -> int:
    try:
        table = SalesTable.open(settings.table, source="smartgo", create=False).table
    except Exception:
        return 0
    return len(table.snapshots())


def test_a_run_asked_to_stop_commits_what_it_read_and_says_partial(
    workspace: DemoPaths, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    settings = settings_of(workspace, export={"batch_size": 10, "commit_rows": 10})
    records = export(settings, days(), should_stop=lambda: True)
    assert [r.status for r in records] == [RunStatus.PARTIAL]
    assert "stopped" in records[0].message
    assert 0 < table_rows(settings).num_rows <= 20
    export(settings, days())
    assert table_rows(settings).num_rows == valid_sales(store[1])


def test_a_day_another_run_holds_is_not_exported_twice_at_once(workspace: DemoPaths) -> None:
    settings = settings_of(workspace)
    other = SqliteProgressStore(settings.progress.path)
    assert other.acquire_lease(f"window:smartgo:{FIRST_DAY}", "the-other-run", 60)
    records = export(settings, [FIRST_DAY])
    assert [r.status for r in records] == [RunStatus.FAILED]
    assert "another run is exporting" in records[0].message
    assert table_rows(settings).num_rows == 0
    other.release_lease(f"window:smartgo:{FIRST_DAY}", "the-other-run")
    assert export(settings, [FIRST_DAY])[0].status is not RunStatus.FAILED


def test_a_run_waits_for_the_other_run_of_its_day_when_configured(workspace: DemoPaths) -> None:
    settings = settings_of(workspace, export={"lock_wait_seconds": 30})
    other = SqliteProgressStore(settings.progress.path)
    assert other.acquire_lease(f"window:smartgo:{FIRST_DAY}", "the-other-run", 60)
    releaser = threading.Timer(
        1.0, other.release_lease, (f"window:smartgo:{FIRST_DAY}", "the-other-run")
    )
    releaser.start()
    records = export(settings, [FIRST_DAY])
    releaser.join()
    assert records[0].status is not RunStatus.FAILED
    assert table_rows(settings).num_rows > 0


def test_an_unusable_progress_store_never_stops_the_export(
    workspace: DemoPaths, store: tuple[DemoPaths, DemoCatalog]
) -> None:
    blocker = workspace.root / "not-a-folder"
    blocker.write_text("a file where the progress store's folder should be")
    settings = settings_of(workspace, progress={"path": str(blocker / "progress.db")})
    records = export(settings, days())
    assert {r.status for r in records} <= {RunStatus.SUCCEEDED, RunStatus.PARTIAL}
    assert table_rows(settings).num_rows == valid_sales(store[1])
