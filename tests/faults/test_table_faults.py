"""The Iceberg table under fault: a concurrent writer, the catalog gone at commit, a read-only
warehouse, a full warehouse disk. Each export is real (the demo store, its photo server, the
local model); each fault is real too: a second process committing, a PostgreSQL catalog whose
network path is cut, a warehouse the kernel refuses to write to (even for root), a warehouse on
a disk of its own with no byte left.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy.engine import make_url

from smartgo_exporter.demo import DemoPaths
from smartgo_exporter.pipeline import export
from smartgo_exporter.run_records import RunStatus
from smartgo_exporter.runs import BatchDone
from smartgo_exporter.sinks.iceberg import RUN_ID_PROPERTY, SalesTable
from tests.faults.conftest import (
    FaultReport,
    day_of,
    demo_source_sales,
    key_counts,
    read_table,
)
from tests.test_export import FIRST_DAY, days, settings_of

# --- a second writer, committing to the same table while the export commits --------------------

WRITER = """
import os, sys, time
from datetime import UTC, datetime
from decimal import Decimal
from smartgo_exporter import load_config
from smartgo_exporter.errors import SinkError
from smartgo_exporter.sales import Sale
from smartgo_exporter.schema import EmbeddingStatus, SaleRow, rows_to_arrow
from smartgo_exporter.sinks.iceberg import SalesTable

config, tenant, stop, ledger = sys.argv[1:5]
table = SalesTable.open(load_config(config).table, source="smartgo")
print("ready", flush=True)
number = 0
with open(ledger, "a") as committed:
    while not os.path.exists(stop):
        number += 1
        sale = Sale(
            sale_id=f"concurrent-{number}", tenant_id=tenant, product_id="P-1",
            sold_at=datetime(2026, 10, 6, 12, tzinfo=UTC), sale_price=Decimal("9.99"),
            currency="EUR",
        )
        rows = rows_to_arrow(
            [SaleRow(sale, EmbeddingStatus.NO_IMAGE)], source="smartgo",
            run_id="concurrent-writer", exported_at=datetime.now(UTC),
        )
        try:
            table.upsert(rows, run_id="concurrent-writer")
        except SinkError as error:
            print("gave up", sale.sale_id, error, flush=True)
            continue
        print(sale.sale_id, file=committed, flush=True)
        time.sleep(0.5)  # busy, not a flood: each commit adds a manifest every commit reads
"""


def test_a_concurrent_writer_committing_to_the_same_partitions_loses_nothing_on_either_side(
    workspace: DemoPaths, fault_report: FaultReport, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process upserts other sales of the same store and month, commit after commit,
    for the whole export: each commit that loses the race is re-planned and retried, and in
    the end both writers' sales are in the table, each exactly once."""
    settings = settings_of(workspace, export={"batch_size": 10, "commit_rows": 10})
    SalesTable.open(settings.table, source="smartgo")  # both writers start from one table
    stop, ledger = workspace.root / "stop-writer", workspace.root / "writer-ledger"
    tenant = next(iter(demo_source_sales(workspace.sales_db)))[0]
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(workspace.config), tenant, str(stop), str(ledger)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        with structlog.testing.capture_logs() as logs, caplog.at_level(logging.WARNING):
            records = export(
                settings, [FIRST_DAY], on_batch=_after_first_commit(wait_for_commit_in=ledger)
            )
    finally:
        stop.touch()
        writer_output = writer.communicate(timeout=60)[0]
    assert writer.returncode == 0, writer_output

    written = ledger.read_text().split()
    table = SalesTable.open(settings.table, source="smartgo").table
    ours = {r.run_id for r in records}
    history = [s.summary[RUN_ID_PROPERTY] for s in table.snapshots()]
    first, last = (
        min(i for i, run in enumerate(history) if run in ours),
        max(i for i, run in enumerate(history) if run in ours),
    )
    # The other writer really committed in between our commits, not before or after them.
    assert "concurrent-writer" in history[first:last]
    rows = read_table(settings)
    present = key_counts(rows)
    assert written
    assert all(present[(tenant, sale)] == 1 for sale in written)
    conflicts = sum(entry["event"] == "commit_conflict" for entry in logs) + sum(
        "concurrent update" in message for message in caplog.messages
    )
    fault_report.record(
        fault="table: concurrent writer during our commits",
        injected=f"a 2nd process upserting into the same partitions: {len(written)} commits,"
        f" {conflicts} of ours lost the race and were retried",
        settings=settings,
        source_sales=day_of(demo_source_sales(workspace.sales_db), FIRST_DAY),
        records=records,
    )
    assert {str(r.status) for r in records} <= {"SUCCEEDED", "PARTIAL"}


def _after_first_commit(*, wait_for_commit_in: Path) -> Callable[[BatchDone], None]:
    """Hold the export after its first commit until the other writer has committed again, so
    that the other writer's commit lands between ours however the two processes are scheduled
    (on a loaded machine the export can otherwise finish inside the writer's pause)."""
    seen: list[BatchDone] = []

    def hold(batch: BatchDone) -> None:
        seen.append(batch)
        if len(seen) != 1:
            return
        committed = _lines(wait_for_commit_in)
        deadline = time.monotonic() + 60
        while _lines(wait_for_commit_in) == committed and time.monotonic() < deadline:
            time.sleep(0.05)

    return hold


def _lines(path: Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


# --- the catalog unreachable at commit ---------------------------------------------------------


@dataclasses.dataclass
class CatalogLink:
    """A TCP proxy between the exporter and its PostgreSQL catalog: the network path to cut."""

    upstream: tuple[str, int]
    port: int = 0
    _loop: asyncio.AbstractEventLoop = dataclasses.field(default_factory=asyncio.new_event_loop)
    _server: asyncio.Server | None = None
    _open: set[asyncio.StreamWriter] = dataclasses.field(default_factory=set)
    connections: int = 0

    def start(self) -> None:
        threading.Thread(target=self._loop.run_forever, name="catalog-link", daemon=True).start()
        self._call(self._listen())

    def cut(self) -> None:
        """Stop listening and drop every open connection, as a network partition would."""
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    def close(self) -> None:
        self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._open |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    target.write(data)
                    await target.drain()
            target.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._open -= {writer, up_writer}


@pytest.fixture
def catalog_link(postgresql_database: str) -> Iterator[tuple[CatalogLink, str]]:
    """A cuttable link to the session's PostgreSQL database; yields it and the catalog's URI."""
    url = make_url(postgresql_database)
    link = CatalogLink((url.host or "127.0.0.1", url.port or 5432))
    link.start()
    try:
        yield link, url.set(port=link.port).render_as_string(hide_password=False)
    finally:
        link.close()


def test_a_catalog_unreachable_at_commit_is_retried_then_fails_the_run_with_no_partial_batch(
    workspace: DemoPaths,
    catalog_link: tuple[CatalogLink, str],
    fault_report: FaultReport,
) -> None:
    """The PostgreSQL catalog's network path is cut once the first batch is committed: the next
    commit is tried `commit_attempts` times, then the run says FAILED and why, and the table
    shows exactly the committed batches, never part of one."""
    link, uri = catalog_link
    settings = settings_of(
        workspace,
        export={"batch_size": 10, "commit_rows": 10},
        table={
            "catalog_name": f"fault_{uuid.uuid4().hex[:8]}",
            "catalog": {
                "type": "sql",
                "uri": uri,
                "warehouse": f"file://{workspace.warehouse}",
                "pool_pre_ping": "true",
            },
            "commit_attempts": 3,
        },
    )

    def cut_after_first_batch(done: BatchDone) -> None:
        if done.counts.written:
            link.cut()

    with structlog.testing.capture_logs() as logs:
        records = export(settings, days(), on_batch=cut_after_first_batch)

    assert [r.status for r in records] == [RunStatus.FAILED]
    # The batch being committed, or a lookup (of the next batch, or of the next day read
    # ahead), met the cut: either way the message names the table and the reason, refused
    # for a new connection, closed for one in use.
    assert "table pricing_intelligence.smartgo_sales" in records[0].message
    assert re.search("Connection refused|server closed the connection", records[0].message)
    retries = [entry for entry in logs if entry["event"] == "commit_failed"]
    assert len(retries) == 2  # three attempts in all
    link.restore()
    committed = read_table(settings)
    assert committed.num_rows == records[0].counts.written  # the failed batch left no trace
    table = SalesTable.open(settings.table, source="smartgo", create=False).table
    assert len(table.snapshots()) == 1
    fault_report.record(
        fault="table: catalog unreachable at commit",
        injected="TCP proxy to the PostgreSQL catalog cut after batch 1",
        settings=settings,
        source_sales=demo_source_sales(workspace.sales_db),
        records=records,
        expect_status="FAILED",
    )


# --- a read-only warehouse ---------------------------------------------------------------------


@contextlib.contextmanager
def immutable(folder: Path) -> Iterator[None]:
    """`chattr +i` on a folder and all below it: even root can create, rename or delete nothing
    there (a plain chmod stops no one running as root). Always undone, or pytest could never
    clean the folder up."""
    subprocess.run(["chattr", "-R", "+i", str(folder)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-R", "-i", str(folder)], check=True)


def test_a_read_only_warehouse_fails_the_run_with_a_clear_message_and_a_rerun_converges(
    workspace: DemoPaths, fault_report: FaultReport
) -> None:
    """Day 1 is exported, then the warehouse turns read-only: the three days' one commit
    fails with the operating system's reason after its retries, and so does each day's run
    (day 1's too, though it had nothing to write: its end was in that commit); once the
    warehouse is writable again, a re-run completes all three."""
    settings = settings_of(workspace, table={"commit_attempts": 2})
    export(settings, [FIRST_DAY])
    with immutable(workspace.warehouse):
        records = export(settings, days())
    assert [r.status for r in records] == [RunStatus.FAILED] * 3
    for record in records:
        assert record.counts.written == 0
        assert "Operation not permitted" in record.message
        assert "cannot commit" in record.message
    fault_report.record(
        fault="table: warehouse read-only",
        injected="chattr -R +i on the warehouse after day 1 was exported",
        settings=settings,
        source_sales=demo_source_sales(workspace.sales_db),
        records=records,
        expect_status="FAILED",
    )


# --- a full warehouse disk ---------------------------------------------------------------------

WAREHOUSE_DISK = "32m"
"""The warehouse's own disk: room for the demo's table many times over, filled in a moment."""


@pytest.fixture
def warehouse_on_tmpfs(workspace: DemoPaths) -> Iterator[Path]:
    """The workspace's warehouse on a tmpfs of its own, so filling it fills no one else's disk;
    unmounted afterwards (lazily: the catalog's SQLite connections may still hold a file)."""
    workspace.warehouse.mkdir(parents=True, exist_ok=True)
    tmpfs = ["-t", "tmpfs", "-o", f"size={WAREHOUSE_DISK}", "sgx-warehouse"]
    subprocess.run(["mount", *tmpfs, str(workspace.warehouse)], check=True)
    try:
        yield workspace.warehouse
    finally:
        subprocess.run(["umount", "--lazy", str(workspace.warehouse)], check=True)


def fill_disk(folder: Path) -> Path:
    """Write zeros to a new file in `folder` until the kernel answers ENOSPC; return the file,
    whose removal frees the disk again."""
    filler = folder / "filler"
    chunk = bytes(1 << 20)
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        while True:
            try:
                os.write(descriptor, chunk)  # a short write fills the rest; the next one fails
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                return filler
    finally:
        os.close(descriptor)


def test_a_full_warehouse_disk_fails_the_run_saying_no_space_and_a_rerun_converges(
    workspace: DemoPaths, warehouse_on_tmpfs: Path, fault_report: FaultReport
) -> None:
    """Day 1 is exported, then the warehouse's disk is filled to the last byte. Unlike a
    read-only warehouse, the batch's data files can still be created, and writing them fails:
    the three days' one commit meets ENOSPC on every attempt and each day's run fails saying
    so, their files left on disk but none in the table; once space is freed, a re-run
    completes all three days."""
    settings = settings_of(workspace, table={"commit_attempts": 2})
    export(settings, [FIRST_DAY])
    snapshots = len(SalesTable.open(settings.table, source="smartgo").table.snapshots())
    before = key_counts(read_table(settings))
    filler = fill_disk(warehouse_on_tmpfs)

    records = export(settings, days())

    assert [r.status for r in records] == [RunStatus.FAILED] * 3
    for record in records:
        assert record.counts.written == 0
        assert "No space left on device" in record.message
        assert "cannot commit" in record.message
    table = SalesTable.open(settings.table, source="smartgo", create=False).table
    assert len(table.snapshots()) == snapshots
    assert key_counts(read_table(settings)) == before
    in_table = {Path(task.file.file_path).name for task in table.scan().plan_files()}
    on_disk = {path.name for path in warehouse_on_tmpfs.rglob("*.parquet")}
    assert on_disk - in_table, "the failed batch's files were never even started"
    fault_report.record(
        fault="table: warehouse disk full",
        injected=f"the warehouse on a {WAREHOUSE_DISK} tmpfs of its own, filled to ENOSPC after"
        " day 1 was exported",
        settings=settings,
        source_sales=demo_source_sales(workspace.sales_db),
        records=records,
        fix=filler.unlink,
        expect_status="FAILED",
    )
