"""The exporter's own process dying or asked to stop: SIGKILL anywhere, SIGTERM from a supervisor.

SIGKILL trials run the export in a child process (forked, see `ForkServer`) and kill it at
one of four points: while it fetches photos, while the model embeds, after a batch's Parquet
files are written but before the commit, and after the last commit but before the run record is
written. The child kills itself with a real SIGKILL the moment it logs the point's event
(`photos_fetching`, `batch_embedding`, `batch_committed`) or, between write and commit, the
moment pyiceberg's `Transaction.commit_transaction` is entered; at a random occurrence and,
for the two points that last a while, after a random delay: nothing the exporter could catch,
flush or clean up. Then the next run (in this process, as the next night's would)
must find each sale in the table exactly once, and the killed run's record must say it did not
finish.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from smartgo_exporter.config import Settings, SqliteProgressConfig
from smartgo_exporter.demo import DemoPaths
from smartgo_exporter.progress.sqlite import SqliteProgressStore
from smartgo_exporter.run_records import RunRecord, RunStatus
from tests.faults.conftest import (
    FaultReport,
    converged,
    day_of,
    demo_source_sales,
    measure_export,
    read_table,
    rerun_export,
)
from tests.test_export import FIRST_DAY, days, settings_of

BATCH_SIZE = 5
LEASE_SECONDS = 0.6
"""The killed run's hold on its day lapses this long after its last renewal."""
CHILD_SETTINGS = {
    "export": {
        "batch_size": BATCH_SIZE,
        "commit_rows": BATCH_SIZE,
        "lease_seconds": LEASE_SECONDS,
    }
}
RERUN_SETTINGS = {"export": {"lock_wait_seconds": 10}}

FORK_SERVER = """
import json, os, signal, sys, threading, time
from datetime import date
import structlog
from pyiceberg.table import Transaction
from smartgo_exporter import export, load_config
from smartgo_exporter.embedders import load_embedder
from smartgo_exporter.logs import configure_logging
import smartgo_exporter.embedders.local, smartgo_exporter.embedders.efficientnet_lite
import smartgo_exporter.sources.sql, smartgo_exporter.progress.sqlite, onnxruntime

class SlowEmbedder:
    def __init__(self, embedder, delay):
        self.embedder, self.delay = embedder, delay
        self.model_id, self.dim = embedder.model_id, embedder.dim
        self.include_title = embedder.include_title

    def embed(self, images, *, captions=None):
        time.sleep(self.delay)
        return self.embedder.embed(images, captions=captions)

def trial(config, day, event, occurrence, delay, log, settings):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    configure_logging("DEBUG")
    seen = 0

    def sigkill():
        os.kill(os.getpid(), signal.SIGKILL)

    def reached(name):
        nonlocal seen
        if name == event:
            seen += 1
            if seen == occurrence:
                print("killing at", event, occurrence, "after", delay, file=sys.stderr)
                threading.Timer(delay, sigkill).start() if delay else sigkill()

    def kill_at_point(logger, method, entry):
        reached(entry["event"])
        return entry

    structlog.configure(processors=[kill_at_point, *structlog.get_config()["processors"]])
    commit = Transaction.commit_transaction

    def commit_transaction(self):
        reached("commit_transaction")  # data files and manifests written, catalog not told
        return commit(self)

    Transaction.commit_transaction = commit_transaction
    settings = load_config(config, **settings)
    embedder = load_embedder(settings.embedder)
    if event == "batch_embedding" and delay:
        # Five photos embed in about 50 ms, so a kill up to 0.15 s after the last batch's
        # `batch_embedding` could land after the run had recorded its outcome; held this long,
        # the embedding step is still under way when the kill comes.
        embedder = SlowEmbedder(embedder, delay)
    export(settings, [date.fromisoformat(day)], embedder=embedder)
    print("the export finished before the kill", file=sys.stderr, flush=True)

print("ready", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            trial(**json.loads(line))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    killed_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    print(json.dumps({"signal": killed_by}), flush=True)
"""


@dataclasses.dataclass
class ForkServer:
    """A Python process with the exporter imported once, forking one child per trial.

    Each trial is still a process of its own, killed for real; forking it from a process
    that has done the imports saves the two seconds each would spend importing pyiceberg,
    pyarrow and onnxruntime. The server imports only (no model, no table, no connection),
    so a child inherits no state of an earlier trial; it builds everything itself.
    """

    process: subprocess.Popen[str]

    def kill_at(self, config: Path, day: date, event: str, occurrence: int, delay: float,
                log: Path) -> int | None:  # fmt: skip
        """Run one export in a new child, killed at `event`; the signal that ended it."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        spec = {"config": str(config), "day": day.isoformat(), "event": event,
                "occurrence": occurrence, "delay": delay, "log": str(log),
                "settings": CHILD_SETTINGS}  # fmt: skip
        self.process.stdin.write(json.dumps(spec) + "\n")
        self.process.stdin.flush()
        answer: int | None = json.loads(self.process.stdout.readline())["signal"]
        return answer


@pytest.fixture(scope="module")
def fork_server() -> Iterator[ForkServer]:
    process = subprocess.Popen(
        [sys.executable, "-c", FORK_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        # One BLAS thread: the server forks, and a forked child inherits no threads.
        env=os.environ | {"OPENBLAS_NUM_THREADS": "1"},
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    try:
        yield ForkServer(process)
    finally:
        process.kill()
        process.wait()


POINTS = {
    "during fetch": ("photos_fetching", 0.03),
    "during embed": ("batch_embedding", 0.15),
    "between write and commit": ("commit_transaction", 0.0),
    "after commit before the run record": ("batch_committed", 0.0),
}
"""Where a trial kills: the event the child logs there, and the most random delay after it."""
TRIALS_PER_POINT = 5


def _keep_first_sales(sales_db: Path, day: date, keep: int) -> int:
    """Cut `day` down to its first `keep` sales (a trial needs only a few batches); the
    number of batches its export has."""
    with sqlite3.connect(sales_db) as db:
        db.execute(
            "DELETE FROM sales WHERE date(sold_at) = :day AND id NOT IN"
            " (SELECT id FROM sales WHERE date(sold_at) = :day ORDER BY id LIMIT :keep)",
            {"day": day.isoformat(), "keep": keep},
        )
        (rows,) = db.execute(
            "SELECT count(*) FROM sales WHERE date(sold_at) = ?", (day.isoformat(),)
        ).fetchone()
    return math.ceil(rows / BATCH_SIZE)


def _runs_of(settings: Settings, day: date) -> list[RunRecord]:
    assert isinstance(settings.progress, SqliteProgressConfig)
    return SqliteProgressStore(settings.progress.path).runs_on(day)


@pytest.mark.parametrize("trial", range(TRIALS_PER_POINT))
@pytest.mark.parametrize("point", list(POINTS))
def test_an_export_killed_at_any_point_then_rerun_holds_each_sale_exactly_once(
    workspace: DemoPaths,
    fork_server: ForkServer,
    fault_report: FaultReport,
    point: str,
    trial: int,
) -> None:
    event, most_delay = POINTS[point]
    batches = _keep_first_sales(workspace.sales_db, FIRST_DAY, keep=4 * BATCH_SIZE)
    chance = random.Random(f"{point}/{trial}")
    if point == "after commit before the run record":
        occurrence = batches  # the last commit: only the run record is left to write
    else:
        occurrence = chance.randint(1, batches)
    delay = round(chance.uniform(0, most_delay), 3)
    log = workspace.root / "child.log"
    ended_by = fork_server.kill_at(workspace.config, FIRST_DAY, event, occurrence, delay, log)
    assert ended_by == signal.SIGKILL, log.read_text()[-2000:]
    killed_at = time.monotonic()

    settings = settings_of(workspace)
    source = day_of(demo_source_sales(workspace.sales_db), FIRST_DAY)
    [killed] = _runs_of(settings, FIRST_DAY)
    assert killed.status is RunStatus.RUNNING  # nothing could record how it ended
    rows = read_table(settings)
    # The dead run's hold on the day lapses, as it would have by the next night.
    time.sleep(max(0.0, LEASE_SECONDS - (time.monotonic() - killed_at)))
    again, seconds = rerun_export(settings, [FIRST_DAY])
    # The next run of the day closes the record the killed run could not.
    [closed] = [r for r in _runs_of(settings, FIRST_DAY) if r.run_id == killed.run_id]
    assert closed.status is RunStatus.FAILED
    assert "interrupted" in closed.message
    outcome = converged(
        measure_export(settings, source, [closed], rows=rows), settings, source, again, seconds
    )
    fault_report.record(
        fault=f"process: SIGKILL {point}",
        injected=f"child SIGKILLs itself at `{event}`"
        + (" of the last batch" if point.startswith("after commit") else " of a random batch")
        + (f", 0-{most_delay:g} s later" if most_delay else ""),
        outcome=outcome,
        expect_status="FAILED",
    )


# --- SIGTERM ------------------------------------------------------------------------------------


def _cli(workspace: DemoPaths, *extra: str) -> subprocess.Popen[str]:
    """`smartgo-exporter run` over the demo's three days, in small batches, logging JSON lines."""
    command = Path(sys.executable).with_name("smartgo-exporter")
    return subprocess.Popen(
        [str(command), "run", "--config", str(workspace.config), "--from",
         days()[0].isoformat(), "--to", days()[-1].isoformat(), "--log-level", "INFO", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=os.environ | {"SGX_EXPORT__BATCH_SIZE": "5", "SGX_EXPORT__COMMIT_ROWS": "5",
                          "SGX_EXPORT__LEASE_SECONDS": "1"},
    )  # fmt: skip


def _wait_for(child: subprocess.Popen[str], event: str) -> list[str]:
    """Read the child's log lines until one is `event`; return the lines read."""
    assert child.stderr is not None
    lines: list[str] = []
    for line in child.stderr:
        lines.append(line)
        if f'"event": "{event}"' in line:
            return lines
    raise AssertionError(f"the child ended without logging {event}: {''.join(lines)[-2000:]}")


def test_sigterm_finishes_the_current_batch_and_records_the_day_partial(
    workspace: DemoPaths, fault_report: FaultReport
) -> None:
    """A supervisor's SIGTERM (docker stop, systemd, a deploy) is not a crash: the run commits
    what it read, records PARTIAL with a message, leaves later days for the next run, and exits
    with the status of what it recorded."""
    child = _cli(workspace)
    _wait_for(child, "batch_committed")
    child.send_signal(signal.SIGTERM)
    _output, log = child.communicate(timeout=60)

    assert child.returncode == 0, log[-2000:]
    # The signal asked for the stop, and the run stopped reading its day because of it.
    lines = log.splitlines()
    [requested] = [n for n, line in enumerate(lines) if '"event": "stop_requested"' in line]
    assert '"signal": "SIGTERM"' in lines[requested]
    assert any('"event": "run_stopped_early"' in line for line in lines[requested:])
    settings = settings_of(workspace)
    records = [r for day in days() for r in _runs_of(settings, day)]
    assert [(r.business_date, r.status) for r in records] == [(FIRST_DAY, RunStatus.PARTIAL)]
    assert "stopped before the end of the window" in records[0].message
    assert records[0].counts.sales < len(day_of(demo_source_sales(workspace.sales_db), FIRST_DAY))
    fault_report.record(
        fault="process: SIGTERM",
        injected="SIGTERM to `smartgo-exporter run` after its first commit",
        settings=settings,
        source_sales=demo_source_sales(workspace.sales_db),
        records=records,
        expect_status="PARTIAL",
    )


def test_a_second_sigterm_exits_at_once_and_the_next_run_closes_the_record_and_converges(
    workspace: DemoPaths, fault_report: FaultReport
) -> None:
    child = _cli(workspace)
    _wait_for(child, "batch_committed")
    child.send_signal(signal.SIGTERM)
    _wait_for(child, "stop_requested")
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=60)

    assert child.returncode == -signal.SIGTERM
    settings = settings_of(workspace)
    [killed] = _runs_of(settings, FIRST_DAY)
    assert killed.status is RunStatus.RUNNING
    source = demo_source_sales(workspace.sales_db)
    rows = read_table(settings)
    again, seconds = rerun_export(settings_of(workspace, **RERUN_SETTINGS), days())
    [closed] = [r for r in _runs_of(settings, FIRST_DAY) if r.run_id == killed.run_id]
    assert closed.status is RunStatus.FAILED
    fault_report.record(
        fault="process: second SIGTERM",
        injected="two SIGTERMs to `smartgo-exporter run`: the second ends it mid-batch",
        outcome=converged(
            measure_export(settings, source, [closed], rows=rows), settings, source, again, seconds
        ),
        expect_status="FAILED",
    )
