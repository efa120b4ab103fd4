"""The fault matrix's one contract: every fault test ends by reporting a row through `fault_report`.

A row says what was broken, how, and what came of it: sales lost, sales duplicated, the status
the run reported, and how long a re-run with the fault removed took to converge to the complete
table. `scripts/reliability.py` runs this folder and prints the rows as RELIABILITY.md's table.

Two ways to report. With figures the test measured itself:

    fault_report.record(
        fault="photo server: 500s", injected="real HTTP server answering 500",
        trials=1, lost=0, duplicates=0, status="SUCCEEDED", converge_seconds=1.2,
    )

or, better, by telling it what the source held and letting it measure, from the real table and
the run records, then re-run the export itself (after `fix`, with `rerun_settings` if given):

    outcome = fault_report.record(
        fault="photo server: 500s", injected="real HTTP server answering 500",
        settings=settings, source_sales=demo_source_sales(workspace.sales_db),
        records=records, fix=server.heal, expect_status="SUCCEEDED",
    )

When many faults share one export (one night with many bad photos), measure each fault's own
sales with `measure_export`, re-run once (`rerun_export`), judge each with `converged`, and
report with `outcome=`. Helpers: `demo_source_sales` (a demo store's keys and days), `day_of`,
`read_table`, `key_counts`.

Either way the row is stored first (with `record_property`, so the JUnit XML carries it, failing
or not) and the invariants are asserted after: no sale lost, none duplicated, a status that is
one of SUCCEEDED / PARTIAL / FAILED (and the expected one, when given) and does not contradict
the table, and a re-run that converged. A test calls `record` once per trial; rows with the same
`fault` are added up into one line of the matrix.

What "lost" means (see `check_export`): a source sale that is neither in the table nor reported
by the run records. Reported is: named in a record's errors (by sale id); or counted in errors
beyond the 50 a record keeps (`error_count` over `len(errors)`: that many unnamed sales are given
the benefit of the doubt); or in a window the records say was not completed (a FAILED run, a run
stopped early, or a day never attempted because an earlier day of the same call failed or
stopped).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from smartgo_exporter.config import Settings
from smartgo_exporter.errors import ExporterError
from smartgo_exporter.pipeline import export
from smartgo_exporter.run_records import RunRecord, RunStatus
from smartgo_exporter.sales import Key
from smartgo_exporter.sinks.iceberg import SalesTable

# A fixture for the source's fault tests: a day streamed by a server that can kill the stream.
from tests.faults.source_days import streamed  # noqa: F401

ROW_PROPERTY = "fault_matrix_row"
"""The name of the JUnit XML property that carries one row of the matrix, as JSON."""

SourceSales = Mapping[Key, date] | Iterable[Key]
"""The sales the source held: their keys, best with the business day each belongs to."""

_SEVERITY = {RunStatus.SUCCEEDED: 0, RunStatus.PARTIAL: 1, RunStatus.FAILED: 2}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What an export under a fault did, measured from the table and the run records."""

    source_sales: int
    landed: int
    """Source sales in the table."""
    reported: int
    """Source sales not in the table, but accounted for by the run records."""
    lost: int
    duplicates: int
    """Rows in the table minus distinct (source, tenant_id, sale_id) keys, over all rows."""
    status: str
    """The worst status among the records: FAILED over PARTIAL over SUCCEEDED; "none" if none."""
    statuses: tuple[str, ...] = ()
    converge_seconds: float | None = None
    """Wall time of the re-run that reached the complete table; None if it did not."""
    lost_keys: frozenset[Key] = frozenset()
    untruthful: tuple[str, ...] = ()
    """Ways the records contradict the table (a SUCCEEDED day missing sales, a silent FAILED)."""
    unconverged: frozenset[Key] = frozenset()
    """Source sales still missing or duplicated after the re-run."""
    rerun_records: tuple[RunRecord, ...] = ()


def demo_source_sales(sales_db: Path) -> dict[Key, date]:
    """Every sale in a demo store's database (valid or not), with its business day (UTC)."""
    with sqlite3.connect(sales_db) as db:
        rows = db.execute("SELECT store_id, id, sold_at FROM sales").fetchall()
    return {
        (str(tenant), str(sale)): datetime.fromisoformat(sold_at).date()
        for tenant, sale, sold_at in rows
    }


def day_of(source_sales: Mapping[Key, date], day: date) -> dict[Key, date]:
    """The sales of one business day, for a fault test that exports one day only."""
    return {key: sale_day for key, sale_day in source_sales.items() if sale_day == day}


def read_table(settings: Settings) -> pa.Table:
    """Every row of the sales table; an empty table when it was never created."""
    try:
        table = SalesTable.open(settings.table, source=settings.export.source_name, create=False)
    except ExporterError:
        return pa.table({"source": [], "tenant_id": [], "sale_id": []})
    return table.table.scan().to_arrow()


def key_counts(rows: pa.Table, source: str | None = None) -> Counter[Key]:
    """How often each (tenant_id, sale_id) occurs, among rows of `source` (or of all sources)."""
    counts: Counter[Key] = Counter()
    for row_source, tenant, sale in zip(
        rows.column("source").to_pylist(),
        rows.column("tenant_id").to_pylist(),
        rows.column("sale_id").to_pylist(),
        strict=True,
    ):
        if source is None or row_source == source:
            counts[(tenant, sale)] += 1
    return counts


def duplicates_in(rows: pa.Table) -> int:
    keys = Counter(
        zip(
            rows.column("source").to_pylist(),
            rows.column("tenant_id").to_pylist(),
            rows.column("sale_id").to_pylist(),
            strict=True,
        )
    )
    return sum(keys.values()) - len(keys)


def worst_status(records: Sequence[RunRecord]) -> str:
    if not records:
        return "none"
    return str(max((r.status for r in records), key=lambda s: _SEVERITY.get(s, 3)))


def check_export(
    settings: Settings,
    source_sales: SourceSales,
    records: Sequence[RunRecord],
    *,
    rerun: bool = True,
    fix: Callable[[], None] | None = None,
    rerun_settings: Settings | None = None,
    days: Sequence[date] | None = None,
) -> Outcome:
    """Measure an export under a fault, then re-run it with the fault removed and time that.

    `source_sales` are the keys the source held for the exported days (a mapping to each sale's
    business day lets a FAILED or stopped day account only for its own sales). `fix`, if given,
    removes the fault before the re-run; `rerun_settings` replaces `settings` for it (a longer
    `lock_wait_seconds` after a killed run, a sane timeout). The re-run exports `days`, else
    every day of `source_sales` and of `records`. Converged means: no re-run record FAILED, and
    every source sale in the table exactly once, except sales the re-run rejects at the source.
    """
    outcome = measure_export(settings, source_sales, records)
    if not rerun:
        return outcome
    if fix is not None:
        fix()
    again, seconds = rerun_export(
        rerun_settings or settings, rerun_days(source_sales, records, days)
    )
    return converged(outcome, settings, source_sales, again, seconds)


def measure_export(
    settings: Settings,
    source_sales: SourceSales,
    records: Sequence[RunRecord],
    *,
    rows: pa.Table | None = None,
) -> Outcome:
    """The table and the records after an export under a fault, before any re-run.

    `rows` is the table as read already, when many faults share one export.
    """
    by_day = source_sales if isinstance(source_sales, Mapping) else None
    keys = set(source_sales)
    rows = read_table(settings) if rows is None else rows
    present = key_counts(rows, settings.export.source_name)
    missing = {key for key in keys if key not in present}
    lost_keys = frozenset(missing - _reported(missing, records, by_day))
    return Outcome(
        source_sales=len(keys),
        landed=len(keys) - len(missing),
        reported=len(missing) - len(lost_keys),
        lost=len(lost_keys),
        duplicates=duplicates_in(rows),
        status=worst_status(records),
        statuses=tuple(str(r.status) for r in records),
        lost_keys=lost_keys,
        untruthful=tuple(_contradictions(records, missing, by_day)),
    )


def rerun_days(
    source_sales: SourceSales, records: Sequence[RunRecord], days: Sequence[date] | None = None
) -> list[date]:
    """The days a re-run exports: `days`, the source sales' days and the records' days."""
    by_day = source_sales if isinstance(source_sales, Mapping) else {}
    return sorted(set(days or ()) | set(by_day.values()) | {r.business_date for r in records})


def rerun_export(settings: Settings, days: Sequence[date]) -> tuple[list[RunRecord], float]:
    """Export `days` again, as the next scheduled run would; (records, seconds it took)."""
    started = time.monotonic()
    records = export(settings, days, trigger="fault-rerun")
    return records, round(time.monotonic() - started, 2)


def converged(
    outcome: Outcome,
    settings: Settings,
    source_sales: SourceSales,
    rerun_records: Sequence[RunRecord],
    seconds: float,
    *,
    rows: pa.Table | None = None,
) -> Outcome:
    """`outcome` with the re-run's verdict: `seconds` if it reached the complete table, else None.

    Several faults can share one re-run (one export carrying many faulty photos): each then
    asks, for its own sales, whether that re-run made them complete; `rows` is the table as
    read after the re-run, if read already.
    """
    rows = read_table(settings) if rows is None else rows
    present = key_counts(rows, settings.export.source_name)
    rejected = {
        e.sale_id for r in rerun_records for e in r.errors if e.stage == "source" and e.sale_id
    }
    unconverged = frozenset(
        key
        for key in set(source_sales)
        if present[key] != 1 and not (present[key] == 0 and key[1] in rejected)
    )
    failed = any(r.status is RunStatus.FAILED for r in rerun_records)
    complete = not unconverged and not failed and duplicates_in(rows) == 0
    return dataclasses.replace(
        outcome,
        converge_seconds=seconds if complete else None,
        unconverged=unconverged,
        rerun_records=tuple(rerun_records),
    )


def _reported(
    missing: set[Key], records: Sequence[RunRecord], by_day: Mapping[Key, date] | None
) -> set[Key]:
    named = {e.sale_id for r in records for e in r.errors if e.sale_id}
    reported = {key for key in missing if key[1] in named}
    incomplete_days = {
        r.business_date
        for r in records
        if r.status is RunStatus.FAILED or (r.status is RunStatus.PARTIAL and r.message)
    }
    attempted = {r.business_date for r in records}
    if incomplete_days:
        for key in missing:
            day = by_day.get(key) if by_day is not None else None
            # An export call stops at a failed or stopped day: later days were never tried.
            if day is None or day in incomplete_days or day not in attempted:
                reported.add(key)
    unnamed = sum(max(0, r.error_count - len(r.errors)) for r in records)
    for key in sorted(missing - reported)[:unnamed]:
        reported.add(key)
    return reported


def _contradictions(
    records: Sequence[RunRecord], missing: set[Key], by_day: Mapping[Key, date] | None
) -> Iterable[str]:
    for record in records:
        day = record.business_date
        if record.status is RunStatus.RUNNING or record.finished_at is None:
            yield f"{day}: the record was left {record.status}, never finished"
        if record.status is RunStatus.FAILED and not record.message:
            yield f"{day}: FAILED without a message saying why"
        if record.status is RunStatus.PARTIAL and not (record.message or record.error_count):
            yield f"{day}: PARTIAL without a message or an error saying what is missing"
        if record.status is RunStatus.SUCCEEDED:
            absent = (
                {key for key in missing if by_day.get(key) == day}
                if by_day is not None
                else (missing if len(records) == 1 else set())
            )
            if absent:
                yield f"{day}: SUCCEEDED although {len(absent)} of its sales are not in the table"


class FaultReport:
    """Reports rows of the fault matrix and asserts their invariants; see the module docstring."""

    def __init__(self, record_property: Callable[[str, object], None], test: str) -> None:
        self._record_property = record_property
        self._test = test

    def record(
        self,
        *,
        fault: str,
        injected: str,
        trials: int = 1,
        lost: int | None = None,
        duplicates: int | None = None,
        status: str | RunStatus | None = None,
        converge_seconds: float | None = None,
        settings: Settings | None = None,
        source_sales: SourceSales | None = None,
        records: Sequence[RunRecord] | None = None,
        fix: Callable[[], None] | None = None,
        rerun_settings: Settings | None = None,
        days: Sequence[date] | None = None,
        expect_status: str | RunStatus | None = None,
        outcome: Outcome | None = None,
    ) -> Outcome:
        """Store one row of the matrix, then assert it: nothing lost or duplicated, truthful,
        converged. Give either the figures, or `settings`, `source_sales` and `records` to have
        them measured by `check_export` (figures given as well must then agree), or an
        `outcome` measured already (`measure_export` then `converged`)."""
        if outcome is not None:
            pass
        elif settings is not None and source_sales is not None and records is not None:
            outcome = check_export(
                settings,
                source_sales,
                records,
                fix=fix,
                rerun_settings=rerun_settings,
                days=days,
            )
            for name, given in (("lost", lost), ("duplicates", duplicates)):
                assert given is None or given == getattr(outcome, name), (
                    f"{name}: the test says {given}, the table says {getattr(outcome, name)}"
                )
        else:
            figures = {"lost": lost, "duplicates": duplicates, "status": status}
            absent = [name for name, value in figures.items() if value is None]
            assert not absent, f"give {absent}, or settings, source_sales and records"
            assert lost is not None
            assert duplicates is not None
            outcome = Outcome(
                source_sales=0,
                landed=0,
                reported=0,
                lost=lost,
                duplicates=duplicates,
                status=str(status),
                statuses=(str(status),),
                converge_seconds=converge_seconds,
            )
        row: dict[str, Any] = {
            "fault": fault,
            "injected": injected,
            "trials": trials,
            "lost": outcome.lost,
            "duplicates": outcome.duplicates,
            "status": outcome.status,
            "converge_seconds": outcome.converge_seconds,
            "test": self._test,
        }
        self._record_property(ROW_PROPERTY, json.dumps(row))

        assert outcome.lost == 0, f"{outcome.lost} sales lost: {sorted(outcome.lost_keys)[:10]}"
        assert outcome.duplicates == 0, f"{outcome.duplicates} duplicate rows in the table"
        assert outcome.status in ("SUCCEEDED", "PARTIAL", "FAILED"), (
            f"status reported: {outcome.status}"
        )
        if expect_status is not None:
            assert outcome.status == str(expect_status), (
                f"expected {expect_status}, the runs reported {outcome.statuses}"
            )
        assert not outcome.untruthful, "; ".join(outcome.untruthful)
        assert outcome.converge_seconds is not None, (
            f"the re-run did not converge: {len(outcome.unconverged)} sales missing or doubled"
            f" ({sorted(outcome.unconverged)[:10]}), statuses"
            f" {[str(r.status) for r in outcome.rerun_records]}"
            f" {[r.message for r in outcome.rerun_records if r.message]}"
        )
        return outcome


@pytest.fixture
def fault_report(
    record_property: Callable[[str, object], None], request: pytest.FixtureRequest
) -> FaultReport:
    """Report (and check) this test's rows of the fault matrix; see the module docstring."""
    return FaultReport(record_property, request.node.nodeid)
