"""The progress store under fault, and two runs of one day at once. The store must never stop an
export: unreachable for a whole run, or failing part of the time, the export completes, and the
next run's catch-up still knows where to start from the table's own snapshots. Two processes
started together on one day never duplicate a sale nor lose an update.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc
import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from smartgo_exporter import windows
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.pipeline import export
from smartgo_exporter.progress import ProgressStore, load_progress_store
from smartgo_exporter.progress.sqlite import SqliteProgressStore
from smartgo_exporter.run_records import RunStatus
from smartgo_exporter.runs import BatchDone
from smartgo_exporter.sinks.iceberg import SalesTable
from tests.conftest import SALES_COLUMNS
from tests.faults.conftest import FaultReport, key_counts, read_table
from tests.faults.source_days import (
    DAY,
    day_of_sales,
    export_settings,
    keys_of,
)
from tests.servers.refused import refused_port

if TYPE_CHECKING:
    from tests.conftest import SalesDatabase

pytestmark = pytest.mark.parametrize("sales_db", ["sqlite"], indirect=True)


def logged_events(logs: Sequence[Mapping[str, Any]]) -> set[str]:
    return {str(entry["event"]) for entry in logs}


# --- unreachable for the whole run -------------------------------------------------------------


@pytest.fixture
def unreachable_dynamodb(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A DynamoDB progress section whose endpoint is a closed port; AWS credentials that work."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return {
        "type": "dynamodb",
        "endpoint_url": f"http://127.0.0.1:{refused_port()}",
        "region": "eu-west-1",
        "table": "sgx-progress",
    }


def test_a_store_unreachable_for_the_whole_run_never_stops_the_export(
    sales_db: SalesDatabase,
    unreachable_dynamodb: dict[str, Any],
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    rows = day_of_sales(40)
    sales_db.insert(*rows)
    settings = export_settings(tmp_path, sales_db.url, progress=unreachable_dynamodb)

    with capture_logs() as logs:
        records = export(settings, [DAY])

    assert [r.status for r in records] == [RunStatus.SUCCEEDED]
    assert {"progress_store_save_failed", "progress_store_lease_failed_granted"} <= (
        logged_events(logs)
    )
    fault_report.record(
        fault="progress store: unreachable for the whole run",
        injected="DynamoDB progress store configured at a closed port",
        settings=settings,
        source_sales=keys_of(rows),
        records=records,
        expect_status="SUCCEEDED",
    )


def test_catch_up_without_run_records_starts_from_the_last_day_in_the_tables_snapshots(
    sales_db: SalesDatabase, tmp_path: Path, fault_report: FaultReport
) -> None:
    yesterday = windows.yesterday("UTC")
    week = [yesterday - timedelta(days=n) for n in (3, 2, 1, 0)]
    rows = {day: day_of_sales(5, day, prefix=f"D{day:%d}") for day in week}
    sales_db.insert(*(row for day in week for row in rows[day]))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the progress store's folder should be")
    settings = export_settings(
        tmp_path, sales_db.url, progress={"type": "sqlite", "path": str(blocker / "p.db")}
    )
    # The last night that ran exported week[0]; the exporter was down since, and the store
    # remembers nothing.
    export(settings, week[:1])

    records = export(settings)

    assert [r.business_date for r in records] == week
    source_sales = {key: day for day in week for key, day in keys_of(rows[day], day).items()}
    assert key_counts(read_table(settings)) == dict.fromkeys(source_sales, 1)
    fault_report.record(
        fault="progress store: unreachable, then catch-up",
        injected="progress path under a regular file; next run plans days from the table",
        settings=settings,
        source_sales=source_sales,
        records=records,
        expect_status="SUCCEEDED",
    )


# --- failing part of the time --------------------------------------------------------------


def test_a_store_locked_by_another_process_part_of_the_run_loses_writes_never_the_export(
    sales_db: SalesDatabase, tmp_path: Path, fault_report: FaultReport
) -> None:
    rows = day_of_sales(60)
    sales_db.insert(*rows)
    path = tmp_path / "progress.db"
    SqliteProgressStore(path).close()
    settings = export_settings(
        tmp_path,
        sales_db.url,
        progress={"type": "sqlite", "path": str(path), "busy_timeout_seconds": 0.2},
    )
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")

    def unlock(done: BatchDone) -> None:
        if holder.in_transaction:
            holder.execute("COMMIT")

    try:
        with capture_logs() as logs:
            records = export(settings, [DAY], on_batch=unlock)
    finally:
        holder.close()

    assert [r.status for r in records] == [RunStatus.SUCCEEDED]
    assert {"progress_store_save_failed", "progress_store_lease_failed_granted"} <= (
        logged_events(logs)
    )
    # Once the lock is gone the store takes writes again: the outcome is recorded.
    stored = SqliteProgressStore(path).runs_on(DAY)
    assert [(r.run_id, r.status) for r in stored] == [(records[0].run_id, RunStatus.SUCCEEDED)]
    fault_report.record(
        fault="progress store: locked part of the run",
        injected="another connection holds BEGIN EXCLUSIVE on the SQLite store until batch 1",
        settings=settings,
        source_sales=keys_of(rows),
        records=records,
        expect_status="SUCCEEDED",
    )


class EveryOtherCallFails:
    """The real SQLite store, with every other call failing as a locked database does."""

    def __init__(self, store: ProgressStore) -> None:
        self._store = store
        self.calls = 0
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if name == "close":
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls % 2 == 0:
                self.failed += 1
                raise sqlite3.OperationalError("database is locked")
            return method(*args, **kwargs)

        return call


def test_a_store_failing_every_other_call_never_stops_the_export(
    sales_db: SalesDatabase,
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    rows = day_of_sales(40)
    sales_db.insert(*rows)
    settings = export_settings(tmp_path, sales_db.url)
    flaky = EveryOtherCallFails(load_progress_store(settings.progress))

    with contextlib.closing(flaky), capture_logs() as logs:
        records = export(settings, [DAY], progress=flaky)

    assert [r.status for r in records] == [RunStatus.SUCCEEDED]
    assert flaky.failed >= 2
    assert sum(entry["log_level"] == "warning" for entry in logs) >= flaky.failed
    fault_report.record(
        fault="progress store: fails every other call",
        injected="the SQLite store wrapped to raise 'database is locked' on every second call",
        settings=settings,
        source_sales=keys_of(rows),
        records=records,
        expect_status="SUCCEEDED",
    )


# --- two runs of one day, started together -------------------------------------------------

RUN_ONE_DAY = """
import json, os, sys, time
from datetime import date
from smartgo_exporter import export, load_config

from smartgo_exporter.runs import DayLease

config, day, go, hold = sys.argv[1], date.fromisoformat(sys.argv[2]), sys.argv[3], sys.argv[4]
settings = load_config(config)

def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.005)

def hold_after_first_batch(_):
    if hold and not os.path.exists(hold + ".held"):
        open(hold + ".held", "w").close()
        wait_for(hold + ".released")

asking = DayLease.acquire

async def acquire(lease, *args):
    if hold:
        open(f"{hold}.asked-{os.getpid()}", "w").close()
    return await asking(lease, *args)

DayLease.acquire = acquire

print("ready", flush=True)
wait_for(go)
records = export(settings, [day], on_batch=hold_after_first_batch)
print(json.dumps([[str(r.status), r.message] for r in records]), flush=True)
"""


def write_config(root: Path, url: str, *, lock_wait_seconds: float, batch_size: int = 40) -> Path:
    """The TOML file a scheduled run reads: the SQLite POS, a warehouse and store under root."""
    columns = "\n".join(
        f"{field} = {json.dumps(column)}" for field, column in SALES_COLUMNS.items()
    )
    config = root / "smartgo-exporter.toml"
    config.write_text(
        f"""
[export]
batch_size = {batch_size}
commit_rows = {batch_size}
lock_wait_seconds = {lock_wait_seconds}

[source]
type = "sql"
url = {json.dumps(url)}
table = "sales"

[source.columns]
{columns}

[table.catalog]
type = "sql"
uri = {json.dumps(f"sqlite:///{root}/warehouse/catalog.db")}
warehouse = {json.dumps(f"file://{root}/warehouse")}

[progress]
type = "sqlite"
path = {json.dumps(str(root / "progress.db"))}
""",
        encoding="utf-8",
    )
    return config


@contextlib.contextmanager
def two_runs_of(
    config: Path, day: date, go: Path, hold: Path | None = None
) -> Iterator[list[subprocess.Popen[str]]]:
    """Two exporter processes for `day`, each waiting (imports done) for `go` to exist.

    With `hold`, each run writes `<hold>.asked-<pid>` as it asks for the day, and the first to
    commit a batch then writes `<hold>.held` and holds its day until `<hold>.released` exists.
    """
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RUN_ONE_DAY,
                str(config),
                day.isoformat(),
                str(go),
                str(hold or ""),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for run in runs:
            assert run.stdout is not None
            assert run.stdout.readline().strip() == "ready"
        yield runs
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
            run.wait()


def asked(hold: Path) -> list[Path]:
    """The marks of the runs that have asked for the day (see `two_runs_of`)."""
    return list(hold.parent.glob(f"{hold.name}.asked-*"))


def outcomes(runs: list[subprocess.Popen[str]]) -> list[tuple[str, str]]:
    """(status, message) of each run's one day, sorted: FAILED before SUCCEEDED."""
    results: list[tuple[str, str]] = []
    for run in runs:
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 0
        [[status, message]] = json.loads(out.strip().splitlines()[-1])
        results.append((status, message))
    return sorted(results)


def test_two_runs_of_one_day_started_together_one_exports_the_other_exits_saying_why(
    sales_db: SalesDatabase, tmp_path: Path, fault_report: FaultReport
) -> None:
    rows = day_of_sales(200)
    sales_db.insert(*rows)
    config = write_config(tmp_path, sales_db.url, lock_wait_seconds=0)
    settings = load_config(config)
    SalesTable.open(settings.table, source="smartgo")
    go, hold = tmp_path / "go", tmp_path / "hold"

    # The winner holds its day after its first commit until the loser has given up, so that
    # the loser, which loads its model before asking for the day, always finds it held.
    with two_runs_of(config, DAY, go, hold) as runs:
        go.touch()
        deadline = time.monotonic() + 120
        while all(run.poll() is None for run in runs):
            assert time.monotonic() < deadline, "neither run finished or gave up"
            time.sleep(0.02)
        hold.with_suffix(".released").touch()
        (loser, loser_message), (winner, _) = outcomes(runs)

    assert (loser, winner) == ("FAILED", "SUCCEEDED")
    assert f"another run is exporting {DAY}" in loser_message
    fault_report.record(
        fault="two runs of one day at once, no waiting",
        injected=(
            "two processes released together, lock_wait_seconds = 0: one exports,"
            " the other reports FAILED (another run is exporting)"
        ),
        settings=settings,
        source_sales=keys_of(rows),
        records=SqliteProgressStore(tmp_path / "progress.db").runs_on(DAY),
        expect_status="FAILED",
    )


def test_two_runs_of_one_day_the_second_waits_and_then_lands_what_changed_meanwhile(
    sales_db: SalesDatabase, tmp_path: Path, fault_report: FaultReport
) -> None:
    rows = day_of_sales(200)
    sales_db.insert(*rows)
    config = write_config(tmp_path, sales_db.url, lock_wait_seconds=60)
    settings = load_config(config)
    SalesTable.open(settings.table, source="smartgo")
    go, hold = tmp_path / "go", tmp_path / "hold"
    changed = str(rows[-1]["id"])

    # One run holds its day after its first commit until both have asked for the day, so the
    # other always waits, and the price changes at the source while the first is exporting.
    with two_runs_of(config, DAY, go, hold) as runs:
        go.touch()
        deadline = time.monotonic() + 120
        while not (hold.with_suffix(".held").exists() and len(asked(hold)) == 2):
            assert time.monotonic() < deadline, "no run held the day while the other asked"
            time.sleep(0.02)
        with sales_db.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE sales SET price = '123.45' WHERE id = :id"), {"id": changed}
            )
        hold.with_suffix(".released").touch()
        results = outcomes(runs)

    assert results == [("SUCCEEDED", ""), ("SUCCEEDED", "")]
    landed = read_table(settings)
    assert key_counts(landed) == dict.fromkeys(keys_of(rows), 1)
    price = landed.filter(pc.equal(landed["sale_id"], changed))["sale_price"].to_pylist()
    assert price == [Decimal("123.45")]
    fault_report.record(
        fault="two runs of one day at once, waiting",
        injected="two processes released together; lock_wait_seconds = 60; a price changed",
        settings=settings,
        source_sales=keys_of(rows),
        records=SqliteProgressStore(tmp_path / "progress.db").runs_on(DAY),
        expect_status="SUCCEEDED",
    )
