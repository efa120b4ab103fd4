"""The source database under fault. Each fault is injected into a real export (the SQL source, the
local model, a real Iceberg table and progress store), then the table and the run record are
checked and a re-run must converge, through `fault_report`.

Faults of a server (a connection killed mid-stream, a statement timeout, a wrong password) are
injected into PostgreSQL and MariaDB; faults of the data itself (a bad mapping, bad rows,
duplicate sale ids) into SQLite, where the source reads them the same way; text that must land
byte for byte into all three, whose drivers each hand text over their own way. Sales that change
at the source after their export (voided, deleted, moved, refunded late) are test_source_changes.

The sales of these days have no photos, so each export is about the source and the table.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from smartgo_exporter.config import Settings
from smartgo_exporter.pipeline import export
from smartgo_exporter.run_records import RunStatus
from smartgo_exporter.sinks.iceberg import SalesTable
from tests.conftest import SALES_COLUMNS, pos_row
from tests.faults.conftest import FaultReport, key_counts, read_table
from tests.faults.source_days import (
    DAY,
    SERVERS,
    StreamedDay,
    day_of_sales,
    export_killed_after_the_first_commit,
    export_settings,
    keys_of,
    on_servers_that_kill,
    only_record,
    with_query,
)
from tests.sales import TITLE

if TYPE_CHECKING:
    from tests.conftest import SalesDatabase


def snapshots_of(settings: Settings) -> int:
    table = SalesTable.open(settings.table, source=settings.export.source_name, create=False)
    return len(table.table.snapshots())


@on_servers_that_kill
def test_a_connection_killed_mid_stream_fails_the_day_and_a_rerun_completes_it(
    streamed: StreamedDay, fault_report: FaultReport
) -> None:
    rows, settings, kill = streamed.rows, streamed.settings, streamed.kill

    records = export_killed_after_the_first_commit(settings, kill)

    record = only_record(records)
    assert record.status is RunStatus.FAILED
    assert "cannot read sales from" in record.message
    assert 0 < read_table(settings).num_rows < len(rows)
    backend = streamed.sales_db.backend
    how = "pg_terminate_backend" if backend == "postgresql" else "KILL CONNECTION"
    fault_report.record(
        fault=f"source: connection killed mid-stream ({SERVERS[backend]})",
        injected=f"{how} from another session after the first committed batch",
        settings=settings,
        source_sales=keys_of(rows),
        records=records,
        expect_status="FAILED",
    )


# --- a statement timeout ---------------------------------------------------------------------


@contextlib.contextmanager
def table_locked(sales_db: SalesDatabase) -> Iterator[Callable[[], None]]:
    """Hold an exclusive lock on `sales` from another session (a migration, say) until released."""
    holder = sales_db.engine.connect()
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            if sales_db.backend == "mariadb":
                holder.execute(sa.text("UNLOCK TABLES"))
            holder.rollback()
            holder.close()

    if sales_db.backend == "mariadb":
        holder.execute(sa.text("LOCK TABLES sales WRITE"))
    else:
        holder.execute(sa.text("LOCK TABLE sales IN ACCESS EXCLUSIVE MODE"))
    try:
        yield release
    finally:
        release()


STATEMENT_TIMEOUT = {
    "postgresql": ({"options": "-c statement_timeout=500"}, "statement timeout"),
    "mariadb": ({"init_command": "SET max_statement_time=0.5"}, "max_statement_time exceeded"),
}
"""Per backend: the URL parameters that set a 0.5 s statement timeout, and what it says."""


@pytest.mark.parametrize("sales_db", ["postgresql", "mariadb"], indirect=True)
def test_a_statement_timeout_fails_the_day_with_the_servers_reason(
    sales_db: SalesDatabase, tmp_path: Path, fault_report: FaultReport
) -> None:
    rows = day_of_sales(30)
    sales_db.insert(*rows)
    parameters, reason = STATEMENT_TIMEOUT[sales_db.backend]
    settings = export_settings(tmp_path, with_query(sales_db.url, **parameters))

    with table_locked(sales_db) as release:
        records = export(settings, [DAY])

        record = only_record(records)
        assert record.status is RunStatus.FAILED
        assert reason in record.message
        assert read_table(settings).num_rows == 0
        fault_report.record(
            fault=f"source: statement timeout ({SERVERS[sales_db.backend]})",
            injected="0.5 s timeout set in the URL; the table locked by another session",
            settings=settings,
            source_sales=keys_of(rows),
            records=records,
            fix=release,
            expect_status="FAILED",
        )


# --- a wrong password ------------------------------------------------------------------------


@pytest.mark.parametrize("sales_db", ["mariadb"], indirect=True)
def test_a_wrong_password_fails_the_day_and_the_record_never_shows_it(
    sales_db: SalesDatabase,
    mariadb_user_with_password: tuple[str, str],
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    """MariaDB only: the PostgreSQL server of the test machine trusts loopback connections."""
    rows = day_of_sales(10)
    sales_db.insert(*rows)
    user, password = mariadb_user_with_password
    wrong = f"wrong-{secrets.token_hex(8)}"
    url = make_url(sales_db.url).set(username=user).render_as_string()
    settings = export_settings(tmp_path, url, source={"password": wrong})

    records = export(settings, [DAY])

    record = only_record(records)
    assert record.status is RunStatus.FAILED
    assert "Access denied" in record.message
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("progress.db*"))
    for secret in (wrong, password):
        assert secret not in record.message
        assert secret.encode() not in stored
    fault_report.record(
        fault="source: wrong password",
        injected="a MariaDB user given another password than its own",
        settings=settings,
        source_sales=keys_of(rows),
        records=records,
        rerun_settings=export_settings(tmp_path, url, source={"password": password}),
        expect_status="FAILED",
    )


# --- a mapping that names a column the table lacks ----------------------------------------


@pytest.mark.parametrize("sales_db", ["sqlite"], indirect=True)
def test_a_mapped_column_the_table_lacks_fails_the_day_before_anything_is_written(
    sales_db: SalesDatabase, tmp_path: Path, fault_report: FaultReport
) -> None:
    rows = day_of_sales(10)
    sales_db.insert(*rows)
    columns = {**SALES_COLUMNS, "sale_price": "amount"}
    settings = export_settings(tmp_path, sales_db.url, source={"columns": columns})

    records = export(settings, [DAY])

    record = only_record(records)
    assert record.status is RunStatus.FAILED
    assert record.message.startswith("source.columns.sale_price:")
    assert "amount" in record.message
    assert snapshots_of(settings) == 0
    fault_report.record(
        fault="source: mapped column missing",
        injected="source.columns.sale_price names a column the table lacks",
        settings=settings,
        source_sales=keys_of(rows),
        records=records,
        rerun_settings=export_settings(tmp_path, sales_db.url),
        expect_status="FAILED",
    )


# --- rows the source should never have held -----------------------------------------------


UNBOUNDED_QUERY = "SELECT * FROM sales WHERE sold_at >= :start AND :end IS NOT NULL ORDER BY id"
"""A custom query that ignores the window's end: the one way a sale stamped in the future can
reach an export, which takes only days that have ended."""


BAD_VALUES: dict[str, tuple[dict[str, Any], str, str]] = {
    "a NULL price": ({"price": None}, "sale_price", "missing"),
    "a negative price": ({"price": Decimal("-5.00")}, "sale_price", "negative"),
    "an unknown currency": ({"currency": "EUU"}, "currency", "not an ISO 4217 code"),
    "a sold_at in the future": ({"sold_at": "in three hours"}, "sold_at", "in the future"),
}


@pytest.mark.parametrize("sales_db", ["sqlite"], indirect=True)
@pytest.mark.parametrize("fault", BAD_VALUES)
def test_a_bad_row_is_rejected_by_sale_and_field_and_the_rest_lands_partial(
    sales_db: SalesDatabase, fault: str, tmp_path: Path, fault_report: FaultReport
) -> None:
    rows = day_of_sales(10, DAY)
    changes, field, reason = BAD_VALUES[fault]
    source: dict[str, Any] = {}
    if changes.get("sold_at") == "in three hours":
        changes = {"sold_at": (datetime.now(UTC) + timedelta(hours=3)).replace(tzinfo=None)}
        source = {"query": UNBOUNDED_QUERY}
    bad = pos_row(**{**rows[0], "id": "BAD-1", **changes})
    sales_db.insert(*rows, bad)
    settings = export_settings(tmp_path, sales_db.url, source=source)

    records = export(settings, [DAY])

    record = only_record(records)
    assert record.status is RunStatus.PARTIAL
    assert record.counts.rejected == 1
    [error] = record.errors
    assert (error.sale_id, error.stage, error.reason) == ("BAD-1", "source", field)
    assert reason in error.detail
    assert set(key_counts(read_table(settings))) == set(keys_of(rows, DAY))
    fault_report.record(
        fault=f"source: row with {fault}",
        injected=f"one of 11 rows of the day has {fault}",
        settings=settings,
        source_sales=keys_of([*rows, bad], DAY),
        records=records,
        expect_status="PARTIAL",
    )


# --- text as the source wrote it ------------------------------------------------------------


def test_a_title_with_spaces_and_no_break_spaces_lands_byte_for_byte(
    sales_db: SalesDatabase, tmp_path: Path, fault_report: FaultReport
) -> None:
    rows = day_of_sales(10)
    rows[0] = {**rows[0], "title": TITLE, "brand": "Levi's  ", "category": ""}
    sales_db.insert(*rows)
    settings = export_settings(tmp_path, sales_db.url)

    records = export(settings, [DAY])

    table = read_table(settings)
    [stored] = table.filter(pc.equal(table["sale_id"], rows[0]["id"])).to_pylist()
    assert (stored["title"], stored["brand"], stored["category"]) == (TITLE, "Levi's  ", "")
    outcome = fault_report.record(
        fault="source: title with spaces and NBSP",
        injected=(
            "a title with spaces and no-break spaces around and inside, a brand with trailing"
            " spaces and an empty category, on SQLite, PostgreSQL and MariaDB"
        ),
        settings=settings,
        source_sales=keys_of(rows),
        records=records,
        expect_status="SUCCEEDED",
    )
    # Kept as the source holds it, the row is the source's row: a re-run has nothing to rewrite.
    assert [r.counts.written for r in outcome.rerun_records] == [0]


def lower_case_currency_row() -> dict[str, Any]:
    """A sale of DAY, LOWER-1, whose currency the till wrote "gbp"."""
    return pos_row(
        id="LOWER-1", sold_at=datetime(2026, 10, 25, 9, 0), currency="gbp", photo_url=None
    )


@pytest.mark.parametrize("sales_db", ["sqlite"], indirect=True)
def test_a_lower_case_currency_lands_upper_cased_with_a_warning_and_the_run_succeeds(
    sales_db: SalesDatabase, tmp_path: Path, fault_report: FaultReport
) -> None:
    rows = [*day_of_sales(10), lower_case_currency_row()]
    sales_db.insert(*rows)
    settings = export_settings(tmp_path, sales_db.url)

    records = export(settings, [DAY])

    record = only_record(records)
    assert (record.counts.normalised, record.counts.rejected) == (1, 0)
    assert [(e.sale_id, e.stage, e.reason, e.detail) for e in record.errors] == [
        ("LOWER-1", "source", "currency_normalised", "'gbp' written as 'GBP'")
    ]
    table = read_table(settings)
    assert key_counts(table) == dict.fromkeys(keys_of(rows), 1)
    assert table.filter(pc.equal(table["sale_id"], "LOWER-1"))["currency"].to_pylist() == ["GBP"]
    fault_report.record(
        fault="source: lower-case currency, normalised",
        injected='one of 11 rows of the day has currency "gbp"; source.currency_case = "normalise"',
        settings=settings,
        source_sales=keys_of(rows),
        records=records,
        expect_status="SUCCEEDED",
    )


@pytest.mark.parametrize("sales_db", ["sqlite"], indirect=True)
def test_a_lower_case_currency_is_rejected_when_the_source_says_reject(
    sales_db: SalesDatabase, tmp_path: Path, fault_report: FaultReport
) -> None:
    rows, lower = day_of_sales(10), lower_case_currency_row()
    sales_db.insert(*rows, lower)
    settings = export_settings(tmp_path, sales_db.url, source={"currency_case": "reject"})

    records = export(settings, [DAY])

    record = only_record(records)
    assert record.status is RunStatus.PARTIAL
    assert (record.counts.normalised, record.counts.rejected) == (0, 1)
    assert [(e.sale_id, e.stage, e.reason) for e in record.errors] == [
        ("LOWER-1", "source", "currency")
    ]
    assert set(key_counts(read_table(settings))) == set(keys_of(rows))
    fault_report.record(
        fault="source: lower-case currency, rejected",
        injected='one of 11 rows of the day has currency "gbp"; source.currency_case = "reject"',
        settings=settings,
        source_sales=keys_of([*rows, lower]),
        records=records,
        expect_status="PARTIAL",
    )


# --- one sale id twice in a day -------------------------------------------------------------

PAID_SALES = (
    "SELECT sales.* FROM sales JOIN payments ON payments.sale_id = sales.id"
    " WHERE sales.sold_at >= :start AND sales.sold_at < :end ORDER BY sales.sold_at, sales.id"
)
"""A query through a payments table: a sale paid in two parts comes back twice."""


def add_payments(url: str, payments: Sequence[tuple[str, str]]) -> None:
    path = make_url(url).database
    assert path is not None
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("DROP TABLE IF EXISTS payments")
        db.execute("CREATE TABLE payments (sale_id TEXT NOT NULL, amount TEXT NOT NULL)")
        db.executemany("INSERT INTO payments VALUES (?, ?)", payments)


@pytest.mark.parametrize("sales_db", ["sqlite"], indirect=True)
def test_a_sale_id_twice_in_one_day_lands_once_with_the_duplicate_recorded(
    sales_db: SalesDatabase, tmp_path: Path, fault_report: FaultReport
) -> None:
    rows = day_of_sales(6)
    sales_db.insert(*rows)
    paid_twice = str(rows[2]["id"])
    add_payments(sales_db.url, [(str(row["id"]), "10.00") for row in rows] + [(paid_twice, "9.99")])
    settings = export_settings(tmp_path, sales_db.url, source={"query": PAID_SALES})

    records = export(settings, [DAY])

    record = only_record(records)
    assert record.counts.sales == len(rows) + 1
    assert [(e.sale_id, e.reason) for e in record.errors] == [(paid_twice, "duplicate_sale_id")]
    assert key_counts(read_table(settings)) == dict.fromkeys(keys_of(rows), 1)
    fault_report.record(
        fault="source: duplicate sale id in one day",
        injected="a query joining payments returns a sale paid in two parts twice",
        settings=settings,
        source_sales=keys_of(rows),
        records=records,
        expect_status="SUCCEEDED",
    )


@pytest.mark.parametrize("sales_db", ["sqlite"], indirect=True)
def test_a_sale_id_twice_in_one_day_lands_once_even_in_different_batches(
    sales_db: SalesDatabase, tmp_path: Path
) -> None:
    rows = day_of_sales(6)
    sales_db.insert(*rows)
    paid_twice = str(rows[0]["id"])
    add_payments(sales_db.url, [(str(row["id"]), "10.00") for row in rows] + [(paid_twice, "1.00")])
    # Its two rows come first and last: in the first batch of two and in the fourth.
    query = PAID_SALES.replace(
        "ORDER BY sales.sold_at, sales.id", "ORDER BY payments.amount DESC, sales.id"
    )
    settings = export_settings(
        tmp_path, sales_db.url, source={"query": query}, export={"batch_size": 2, "commit_rows": 2}
    )

    records = export(settings, [DAY])

    assert only_record(records).status is RunStatus.SUCCEEDED
    assert key_counts(read_table(settings)) == dict.fromkeys(keys_of(rows), 1)
