"""Sales that change at the source after their export: voided, deleted, moved to another day,
refunded days later. Each change is made in a real database (SQLite, PostgreSQL, MariaDB) to a
day exported already, and the day is exported again as a later run would; the table must then
hold exactly the sales the source still has, each once, and the run record must say what left.

For the fault matrix a voided or deleted sale is no sale of the source's any more: "lost" counts
only the sales the source still has (`source_sales` is given those), so a removal is never a
loss, and a sale the source no longer has that stays in the table is asserted on here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc
import pytest
import sqlalchemy as sa

from smartgo_exporter.config import Settings
from smartgo_exporter.day_plan import days_due
from smartgo_exporter.pipeline import export
from smartgo_exporter.run_records import LOOKBACK_TRIGGER, RunRecord, RunStatus
from smartgo_exporter.sales import Key
from tests.conftest import SALES_COLUMNS
from tests.faults import source_days
from tests.faults.conftest import FaultReport, key_counts, read_table
from tests.faults.source_days import (
    DAY,
    SERVERS,
    day_of_sales,
    export_settings,
    keys_of,
    only_record,
)

if TYPE_CHECKING:
    from tests.conftest import SalesDatabase

NEXT_DAY = DAY + timedelta(days=1)
VOID_COLUMN = {"sqlite": "BOOLEAN", "postgresql": "boolean", "mariadb": "BOOLEAN"}
"""The type of the POS's `is_void` column, per backend: a real boolean on PostgreSQL, 0/1
(TINYINT) on MariaDB and SQLite."""


def with_void_column(sales_db: SalesDatabase) -> dict[str, str]:
    """Give the `sales` table a nullable `is_void` column; the column mapping that reads it."""
    with sales_db.engine.begin() as conn:
        conn.execute(
            sa.text(f"ALTER TABLE sales ADD COLUMN is_void {VOID_COLUMN[sales_db.backend]}")
        )
    return {**SALES_COLUMNS, "voided": "is_void"}


def delete_sale(sales_db: SalesDatabase, sale_id: str) -> None:
    with sales_db.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM sales WHERE id = :id"), {"id": sale_id})


def key(row: Mapping[str, Any]) -> Key:
    return (str(row["store_id"]), str(row["id"]))


def without(sales: Mapping[Key, date], *gone: Key) -> dict[Key, date]:
    return {sale: day for sale, day in sales.items() if sale not in gone}


def copies_of(settings: Settings, sale: Key) -> int:
    return key_counts(read_table(settings), settings.export.source_name)[sale]


# --- voided or deleted -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["voided", "deleted"])
def test_a_sale_voided_or_deleted_after_its_export_leaves_the_table_counted_as_removed(
    sales_db: SalesDatabase, how: str, tmp_path: Path, fault_report: FaultReport
) -> None:
    columns = with_void_column(sales_db)
    rows = day_of_sales(30)
    sales_db.insert(*rows)
    settings = export_settings(tmp_path, sales_db.url, source={"columns": columns})
    assert only_record(export(settings, [DAY])).counts.written == len(rows)
    gone = key(rows[7])
    if how == "voided":
        sales_db.update(gone[1], is_void=True)
    else:
        delete_sale(sales_db, gone[1])

    records = export(settings, [DAY])

    record = only_record(records)
    assert (record.status, record.counts.removed) == (RunStatus.SUCCEEDED, 1)
    assert record.counts.voided == (1 if how == "voided" else 0)
    assert copies_of(settings, gone) == 0
    fault_report.record(
        fault=f"source: sale {how} after its export ({SERVERS[sales_db.backend]})",
        injected=f"an exported sale {'marked is_void' if how == 'voided' else 'DELETEd'};"
        " its day re-run",
        settings=settings,
        source_sales=without(keys_of(rows), gone),
        records=records,
        expect_status="SUCCEEDED",
    )


# --- moved to another day --------------------------------------------------------------------


@pytest.mark.parametrize("first", ["old day first", "new day first"])
def test_a_sale_moved_to_another_day_is_never_in_the_table_twice_and_ends_up_once(
    sales_db: SalesDatabase, first: str, tmp_path: Path, fault_report: FaultReport
) -> None:
    old_day, new_day = day_of_sales(4, DAY, prefix="A"), day_of_sales(4, NEXT_DAY, prefix="B")
    sales_db.insert(*old_day, *new_day)
    settings = export_settings(tmp_path, sales_db.url)
    export(settings, [DAY, NEXT_DAY])
    moved = key(old_day[1])
    new_sold_at = datetime.combine(NEXT_DAY, datetime.min.time()).replace(hour=18)
    sales_db.update(moved[1], sold_at=new_sold_at, price=Decimal("99.00"))

    def moved_rows() -> list[tuple[datetime, Decimal]]:
        rows = read_table(settings)
        found = rows.filter(pc.equal(rows["sale_id"], moved[1])).to_pylist()
        return [(row["sold_at"], row["sale_price"]) for row in found]

    order = [DAY, NEXT_DAY] if first == "old day first" else [NEXT_DAY, DAY]
    records: list[RunRecord] = []
    for day in order:
        records += export(settings, [day])
        assert len(moved_rows()) <= 1, f"twice after the run of {day}"
    # Its old day once more: nothing resurrects the old version or removes the new one.
    records += export(settings, [DAY])
    assert moved_rows() == [(new_sold_at.replace(tzinfo=UTC), Decimal("99.00"))]
    assert {r.status for r in records} == {RunStatus.SUCCEEDED}
    # The old day's first re-run removes it there, when it comes before the new day's.
    assert sum(r.counts.removed for r in records) == (1 if first == "old day first" else 0)
    fault_report.record(
        fault=f"source: sale moved to another day, {first} ({SERVERS[sales_db.backend]})",
        injected="sold_at and price of an exported sale moved to the next day; both days re-run",
        settings=settings,
        source_sales={**keys_of(old_day, DAY), **keys_of(new_day, NEXT_DAY), moved: NEXT_DAY},
        records=records,
        expect_status="SUCCEEDED",
    )


# --- a read that fails part-way ---------------------------------------------------------------


@source_days.on_servers_that_kill
def test_a_read_that_fails_part_way_removes_nothing_and_the_rerun_removes_what_is_gone(
    streamed: source_days.StreamedDay, fault_report: FaultReport
) -> None:
    sales_db, rows, settings = streamed.sales_db, streamed.rows, streamed.settings
    export(settings, [DAY])
    deleted = key(rows[-1])  # never read either way: the source no longer has it
    delete_sale(sales_db, deleted[1])
    # Every price corrected too, so that each batch of the re-run commits, and the connection
    # is killed after the first of them, with most of the day still unread.
    with sales_db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE sales SET price = price + 1"))

    records = source_days.export_killed_after_the_first_commit(settings, streamed.kill)

    record = only_record(records)
    assert (record.status, record.counts.removed) == (RunStatus.FAILED, 0)
    assert copies_of(settings, deleted) == 1
    outcome = fault_report.record(
        fault=f"source: read fails part-way after a sale was deleted ({SERVERS[sales_db.backend]})",
        injected="a sale deleted, then the connection killed after the re-run's first commit",
        settings=settings,
        source_sales=without(keys_of(rows), deleted),
        records=records,
        expect_status="FAILED",
    )
    assert sum(r.counts.removed for r in outcome.rerun_records) == 1
    assert copies_of(settings, deleted) == 0


# --- late changes, picked up by the lookback ---------------------------------------------------


def scheduled_export(settings: Settings, at: datetime) -> list[RunRecord]:
    """The export a schedule firing at `at` makes: its days planned as of then."""
    plan = days_due(settings, at)
    return export(settings, plan.days, lookback=plan.lookback, trigger="schedule")


def nightly_at(day: date) -> datetime:
    """03:00 UTC on `day`: when the schedule exports the day before."""
    return datetime.combine(day, datetime.min.time(), UTC).replace(hour=3)


def test_a_lookback_run_picks_up_a_refund_made_three_days_later(
    sales_db: SalesDatabase, tmp_path: Path, fault_report: FaultReport
) -> None:
    columns = with_void_column(sales_db)
    days = [DAY + timedelta(days=n) for n in range(4)]
    rows = {day: day_of_sales(6, day, prefix=f"D{n}") for n, day in enumerate(days)}
    sales_db.insert(*(row for day_rows in rows.values() for row in day_rows))
    settings = export_settings(
        tmp_path, sales_db.url, source={"columns": columns}, export={"lookback_days": 3}
    )
    for day in days[:3]:
        scheduled_export(settings, nightly_at(day + timedelta(days=1)))
    refunded = key(rows[DAY][2])
    # Refunded on the fourth day: the night after, its day is read again, three days back.
    sales_db.update(refunded[1], is_void=True)

    records = scheduled_export(settings, nightly_at(days[3] + timedelta(days=1)))

    assert [(r.business_date, r.trigger) for r in records] == [
        (days[3], "schedule"),
        *((day, LOOKBACK_TRIGGER) for day in days[:3]),
    ]
    assert [r.counts.removed for r in records] == [0, 1, 0, 0]
    assert [r.counts.written for r in records] == [len(rows[days[3]]), 0, 0, 0]
    assert copies_of(settings, refunded) == 0
    all_sales = {sale: day for day in days for sale in keys_of(rows[day], day)}
    fault_report.record(
        fault=f"source: refund three days after the sale ({SERVERS[sales_db.backend]})",
        injected="is_void set three days after the sale; the nightly lookback re-reads its day",
        settings=settings,
        source_sales=without(all_sales, refunded),
        records=records,
        expect_status="SUCCEEDED",
    )


def test_a_lookback_run_writes_a_price_corrected_days_later(
    sales_db: SalesDatabase, tmp_path: Path
) -> None:
    rows = day_of_sales(8)
    sales_db.insert(*rows)
    settings = export_settings(tmp_path, sales_db.url, export={"lookback_days": 3})
    scheduled_export(settings, nightly_at(NEXT_DAY))
    corrected = key(rows[4])
    sales_db.update(corrected[1], price=Decimal("12.34"))

    records = scheduled_export(settings, nightly_at(DAY + timedelta(days=3)))

    lookback = [r for r in records if r.business_date == DAY]
    assert [(r.trigger, r.counts.written, r.counts.unchanged) for r in lookback] == [
        (LOOKBACK_TRIGGER, 1, len(rows) - 1)
    ]
    table = read_table(settings)
    [price] = table.filter(pc.equal(table["sale_id"], corrected[1]))["sale_price"].to_pylist()
    assert price == Decimal("12.34")
