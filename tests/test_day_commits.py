"""The commits the days of an export call share (`day_commits`), on a real table."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import pytest

from smartgo_exporter.batches import FinishedBatch, ReadKeys
from smartgo_exporter.config import Settings, TableConfig
from smartgo_exporter.day_commits import DayCommits
from smartgo_exporter.errors import SinkError
from smartgo_exporter.run_records import RunCounts, RunRecord
from smartgo_exporter.runs import new_run_record
from smartgo_exporter.sinks.iceberg import SalesTable
from smartgo_exporter.windows import business_day
from tests.faults.test_table_faults import immutable
from tests.test_iceberg_sink import batch, sale


@pytest.fixture
def table(tmp_path: Path) -> SalesTable:
    config = TableConfig(
        catalog={
            "type": "sql",
            "uri": f"sqlite:///{tmp_path}/catalog.db",
            "warehouse": f"file://{tmp_path}/warehouse",
        },
        commit_attempts=2,
    )
    table = SalesTable.open(config, source="smartgo")
    table.upsert(batch([sale(0)]), run_id="run-0")  # the warehouse folder exists from here
    return table


@pytest.fixture
def table_thread() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as thread:
        yield thread


def day_run(day: date) -> RunRecord:
    settings = Settings(source={"type": "sql", "url": "sqlite:///x.db", "table": "sales"})
    return new_run_record(settings, business_day(day, "UTC"), "test")


def finished(sale_id: int) -> FinishedBatch:
    one = sale(sale_id)
    return FinishedBatch(
        batch([one]), RunCounts(sales=1, written=1), [], ReadKeys(frozenset({one.key}), frozenset())
    )


def test_a_day_ended_while_a_commit_fails_fails_with_it_instead_of_waiting_forever(
    table: SalesTable, table_thread: ThreadPoolExecutor, tmp_path: Path
) -> None:
    first, second = day_run(date(2026, 11, 2)), day_run(date(2026, 11, 3))
    commits = DayCommits(table, table_thread, commit_rows=10_000, commit_seconds=3600)

    async def both_days() -> list[BaseException | None]:
        await commits.add(finished(1), first)
        ending_first = asyncio.create_task(commits.end_day(first, (), now=True))
        await asyncio.sleep(0)  # its commit is under way, retrying against the read-only disk
        await commits.add(finished(2), second)
        ending_second = asyncio.create_task(commits.end_day(second, (), now=False))
        done = await asyncio.wait_for(
            asyncio.gather(ending_first, ending_second, return_exceptions=True), 30
        )
        return list(done)

    with immutable(tmp_path / "warehouse"):
        outcomes = asyncio.run(both_days())

    assert [type(outcome) for outcome in outcomes] == [SinkError, SinkError]
    assert isinstance(commits.failure, SinkError)


def test_the_days_of_one_commit_each_get_their_own_counts(
    table: SalesTable, table_thread: ThreadPoolExecutor
) -> None:
    first, second = day_run(date(2026, 11, 2)), day_run(date(2026, 11, 3))
    heard: list[tuple[str, int]] = []
    commits = DayCommits(
        table,
        table_thread,
        commit_rows=10_000,
        commit_seconds=3600,
        on_committed=lambda record, counts: heard.append((record.run_id, counts.written)),
    )

    async def both_days() -> None:
        await commits.add(finished(1), first)
        await commits.add(finished(2), first)
        waiting = asyncio.create_task(commits.end_day(first, None, now=False))
        await asyncio.sleep(0)
        assert not waiting.done()  # it waits for a commit that holds the next day too
        await commits.add(finished(3), second)
        await commits.end_day(second, None, now=True)
        await waiting

    asyncio.run(both_days())

    assert heard == [(first.run_id, 2), (second.run_id, 1)]
    assert (first.counts.written, second.counts.written) == (2, 1)
    assert len(table.table.snapshots()) == 2
