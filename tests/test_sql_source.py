"""The SQL source, against real SQLite, PostgreSQL and MariaDB databases (see conftest.py)."""

from __future__ import annotations

import secrets
import sqlite3
import traceback
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from smartgo_exporter.config import SqlSourceConfig
from smartgo_exporter.errors import ConfigError, SourceError
from smartgo_exporter.sales import Sale, SaleWarning
from smartgo_exporter.sources import SaleBatch
from smartgo_exporter.sources.sql import SqlSource
from smartgo_exporter.windows import business_day
from tests.sales import TITLE, WINDOW, ids, read_all

if TYPE_CHECKING:
    from conftest import SalesDatabase

LONDON = ZoneInfo("Europe/London")

SourceFactory = Callable[..., SqlSource]


@pytest.fixture
def open_source(sales_db: SalesDatabase) -> Iterator[SourceFactory]:
    """Make SqlSources over `sales_db` (table mode, London time unless told); close them after."""
    sources: list[SqlSource] = []

    def make(**settings: Any) -> SqlSource:
        settings.setdefault("url", sales_db.url)
        settings.setdefault("timezone", "Europe/London")
        if "query" not in settings:
            settings.setdefault("table", "sales")
            settings.setdefault("columns", dict(sales_db.columns))
        source = SqlSource(SqlSourceConfig.model_validate(settings))
        sources.append(source)
        return source

    yield make
    for source in sources:
        source.close()


def london(*parts: int) -> datetime:
    """Naive wall-clock time in London, as the POS database stores it."""
    return datetime(*parts)  # type: ignore[arg-type]


# --- the window ---------------------------------------------------------------------------------


def test_reads_exactly_one_business_day_across_a_clock_change(
    sales_db: SalesDatabase, open_source: SourceFactory
) -> None:
    assert WINDOW.end - WINDOW.start == timedelta(hours=25)
    sales_db.insert(
        sales_db.row(id="before-start", sold_at=london(2026, 10, 24, 23, 59, 59)),
        sales_db.row(id="at-start", sold_at=london(2026, 10, 25, 0, 0, 0)),
        sales_db.row(id="in-the-repeated-hour", sold_at=london(2026, 10, 25, 1, 30, 0)),
        sales_db.row(id="last-second", sold_at=london(2026, 10, 25, 23, 59, 59)),
        sales_db.row(id="at-end", sold_at=london(2026, 10, 26, 0, 0, 0)),
    )

    sales, rejected = read_all(open_source())

    assert ids(sales) == ["at-start", "in-the-repeated-hour", "last-second"]
    assert rejected == []
    assert sales[0].sold_at == WINDOW.start == datetime(2026, 10, 24, 23, 0, tzinfo=UTC)
    assert sales[-1].sold_at == datetime(2026, 10, 25, 23, 59, 59, tzinfo=UTC)


def test_a_source_asks_the_catalog_for_its_table_once_for_many_windows(
    sales_db: SalesDatabase, open_source: SourceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backfill reads a window a day: reflecting the table for each was a tenth of a warm
    31-day re-run."""
    sales_db.insert(sales_db.row(id="the-sale", sold_at=london(2026, 10, 25, 12, 0, 0)))
    source = open_source()
    inspections: list[object] = []
    inspect = sa.inspect
    monkeypatch.setattr(
        sa, "inspect", lambda subject: inspections.append(subject) or inspect(subject)
    )

    days = [business_day(WINDOW.day + timedelta(days=n), "Europe/London") for n in range(3)]
    found = [ids(read_all(source, window)[0]) for window in days]

    assert found == [["the-sale"], [], []]
    assert len(inspections) == 1


def test_a_column_of_instants_is_compared_as_instants(
    sales_db: SalesDatabase, open_source: SourceFactory
) -> None:
    """timestamptz on PostgreSQL, TIMESTAMP on MariaDB, text with an offset on SQLite."""
    sales_db.create_sales_table("sales_at", instant_sold_at=True)
    second = timedelta(seconds=1)
    sales_db.insert(
        sales_db.row(id="before-start", sold_at=WINDOW.start - second),
        sales_db.row(id="at-start", sold_at=WINDOW.start.astimezone(LONDON)),
        sales_db.row(id="last-second", sold_at=WINDOW.end - second),
        sales_db.row(id="at-end", sold_at=WINDOW.end.astimezone(ZoneInfo("America/New_York"))),
        table="sales_at",
    )

    sales, _ = read_all(open_source(table="sales_at"))

    assert ids(sales) == ["at-start", "last-second"]
    assert [sale.sold_at for sale in sales] == [WINDOW.start, WINDOW.end - second]


@pytest.mark.parametrize(
    ("written", "inside"),
    [
        ("2026-10-25 00:00:00", True),
        ("2026-10-25T00:00:00", True),
        ("2026-10-25 00:00:00.000000", True),
        ("2026-10-25 00:00", True),
        ("2026-10-24 23:00:00Z", True),
        ("2026-10-24 23:59:59.999", False),
        ("2026-10-25 23:59:59.999999", True),
        ("2026-10-26 00:00:00", False),
        ("2026-10-26T00:00:00", False),
        ("2026-10-26 00:00:00.000", False),
        ("2026-10-26 00:00:00+00:00", False),
        ("2026-10-25 20:00:00-04:00", False),
        ("2026-10-25 19:59:59-04:00", True),
    ],
)
@pytest.mark.parametrize("sales_db", ["sqlite"], indirect=True)
def test_sqlite_boundaries_hold_however_the_text_was_written(
    sales_db: SalesDatabase, open_source: SourceFactory, written: str, inside: bool
) -> None:
    """SQLite keeps datetimes as text, in whatever form the application wrote them."""
    sales_db.insert(sales_db.row(id="the-sale", sold_at=written))

    sales, rejected = read_all(open_source())

    assert rejected == []
    assert ids(sales) == (["the-sale"] if inside else [])


# --- batches, tenants, bad rows ---------------------------------------------------------------


def test_batches_hold_at_most_batch_size_rows(
    sales_db: SalesDatabase, open_source: SourceFactory
) -> None:
    sales_db.insert(
        *(sales_db.row(id=f"S-{n:03}", sold_at=london(2026, 10, 25, 10, n)) for n in range(23)),
        sales_db.row(id="S-bad", sold_at=london(2026, 10, 25, 11, 0), price=None),
    )

    batches = list(open_source().read(WINDOW, 5, []))

    assert [len(b.sales) + len(b.rejected) for b in batches] == [5, 5, 5, 5, 4]
    assert all(isinstance(b, SaleBatch) for b in batches)
    assert sum(len(b.sales) for b in batches) == 23


def test_tenant_filter_reads_only_the_given_tenants(
    sales_db: SalesDatabase, open_source: SourceFactory
) -> None:
    sales_db.insert(*(sales_db.row(id=f"S-{store}", store_id=store) for store in (1, 2, 3)))

    sales, _ = read_all(open_source(), tenants=["1", "3", "north"])

    assert ids(sales) == ["S-1", "S-3"]
    assert {sale.tenant_id for sale in sales} == {"1", "3"}


def test_bad_rows_are_rejected_naming_the_field_and_the_rest_are_read(
    sales_db: SalesDatabase, open_source: SourceFactory
) -> None:
    sales_db.insert(
        sales_db.row(id="good-1", sold_at=london(2026, 10, 25, 9, 0)),
        sales_db.row(id="no-price", sold_at=london(2026, 10, 25, 9, 1), price=None),
        sales_db.row(id="negative", sold_at=london(2026, 10, 25, 9, 2), price=Decimal("-1.00")),
        sales_db.row(id="odd-money", sold_at=london(2026, 10, 25, 9, 3), currency="EUU"),
        sales_db.row(id=" ", sold_at=london(2026, 10, 25, 9, 4)),
        sales_db.row(id="good-2", sold_at=london(2026, 10, 25, 9, 5)),
    )

    sales, rejected = read_all(open_source())

    assert ids(sales) == ["good-1", "good-2"]
    assert [(r.row, r.field) for r in rejected] == [
        ("no-price", "sale_price"),
        ("negative", "sale_price"),
        ("odd-money", "currency"),
        ("5", "sale_id"),
    ]


# --- text as the database holds it ---------------------------------------------------------


def test_descriptive_text_comes_back_byte_for_byte(
    sales_db: SalesDatabase, open_source: SourceFactory
) -> None:
    sales_db.insert(sales_db.row(title=TITLE, brand="Levi's  ", category="", item_condition=None))

    (sale,), _ = read_all(open_source())

    assert (sale.title, sale.brand, sale.category, sale.condition) == (TITLE, "Levi's  ", "", None)


def test_an_id_padded_by_a_char_column_is_the_same_key_as_without(
    sales_db: SalesDatabase, open_source: SourceFactory
) -> None:
    """PostgreSQL returns a CHAR(n) value padded with spaces to n; the sale is still S-1."""
    sales_db.insert(sales_db.row(id="S-1"))
    query = (
        "SELECT CAST(id AS CHAR(12)) AS padded_id, sales.* FROM sales"
        " WHERE sold_at >= :start AND sold_at < :end"
    )

    (sale,), _ = read_all(
        open_source(query=query, columns={**sales_db.columns, "sale_id": "padded_id"})
    )

    assert sale.key == ("1", "S-1")


def test_a_lower_case_currency_is_read_upper_cased_with_a_warning(
    sales_db: SalesDatabase, open_source: SourceFactory
) -> None:
    sales_db.insert(sales_db.row(id="S-1", currency="gbp"), sales_db.row(id="S-2"))

    [batch] = open_source().read(WINDOW, 10, [])

    assert [(sale.sale_id, sale.currency) for sale in batch.sales] == [
        ("S-1", "GBP"),
        ("S-2", "EUR"),
    ]
    assert batch.warnings == [
        SaleWarning("1", "S-1", "currency_normalised", "'gbp' written as 'GBP'")
    ]


def test_a_lower_case_currency_is_rejected_when_the_source_says_reject(
    sales_db: SalesDatabase, open_source: SourceFactory
) -> None:
    sales_db.insert(sales_db.row(id="S-1", currency="gbp"), sales_db.row(id="S-2"))

    sales, rejected = read_all(open_source(currency_case="reject"))

    assert ids(sales) == ["S-2"]
    assert [(r.row, r.field) for r in rejected] == [("S-1", "currency")]


# --- what to read -----------------------------------------------------------------------------


def test_columns_map_sale_fields_onto_the_tables_own_names(
    sales_db: SalesDatabase, open_source: SourceFactory
) -> None:
    updated = datetime(2026, 10, 24, 14, 0, tzinfo=UTC)  # BST: London is UTC+1 then
    sales_db.insert(
        sales_db.row(
            id="S-7",
            store_id=42,
            sku="SKU-9",
            sold_at=london(2026, 10, 25, 13, 30),
            price=Decimal("49.90"),
            list_price=None,
            currency="gbp",
            item_condition="like new",
            photo_url="https://photos.example/S-7.jpg",
            updated_at=updated,
        )
    )

    (sale,), _ = read_all(open_source())

    assert sale == Sale(
        sale_id="S-7",
        tenant_id="42",
        product_id="SKU-9",
        sold_at=datetime(2026, 10, 25, 13, 30, tzinfo=UTC),
        sale_price=Decimal("49.90"),
        currency="GBP",
        list_price=None,
        title="Denim jacket",
        brand="Levi's",
        category="Jackets",
        condition="like new",
        image_url="https://photos.example/S-7.jpg",
        source_updated_at=updated,
    )


def test_a_field_without_a_mapping_is_read_under_its_own_name(
    sales_db: SalesDatabase, open_source: SourceFactory
) -> None:
    sales_db.insert(sales_db.row(id="S-1"))
    columns = dict(sales_db.columns)
    del columns["sold_at"], columns["brand"], columns["condition"]

    (sale,), _ = read_all(open_source(columns=columns))

    assert (sale.brand, sale.condition) == ("Levi's", None)


def test_a_mapped_column_that_does_not_exist_is_a_config_error(
    open_source: SourceFactory, sales_db: SalesDatabase
) -> None:
    source = open_source(columns={**sales_db.columns, "title": "item_name"})

    with pytest.raises(ConfigError, match="item_name") as error:
        read_all(source)
    assert error.value.key == "source.columns.title"


def test_a_missing_table_is_a_config_error(open_source: SourceFactory) -> None:
    with pytest.raises(ConfigError, match="receipts") as error:
        read_all(open_source(table="receipts"))
    assert error.value.key == "source.table"


def test_a_full_query_is_run_with_the_window_bound_to_start_and_end(
    sales_db: SalesDatabase, open_source: SourceFactory
) -> None:
    sales_db.insert(
        sales_db.row(id="before-start", sold_at=london(2026, 10, 24, 23, 59, 59)),
        sales_db.row(id="at-start", sold_at=london(2026, 10, 25, 0, 0, 0)),
        sales_db.row(id="last-second", sold_at=london(2026, 10, 25, 23, 59, 59), store_id=2),
        sales_db.row(id="at-end", sold_at=london(2026, 10, 26, 0, 0, 0)),
    )
    query = (
        "SELECT id AS sale_id, store_id, sku AS product_id, sold_at, price, currency"
        " FROM sales WHERE sold_at >= :start AND sold_at < :end ORDER BY sold_at"
    )
    source = open_source(query=query, columns={"tenant_id": "store_id", "sale_price": "price"})

    sales, rejected = read_all(source)

    assert ids(sales) == ["at-start", "last-second"]
    assert rejected == []
    assert sales[0].sale_price == Decimal("19.99")
    assert ids(read_all(source, tenants=["2"])[0]) == ["last-second"]


def test_a_query_can_say_which_sales_are_voided_and_those_are_counted_not_read(
    sales_db: SalesDatabase, open_source: SourceFactory
) -> None:
    kept = sales_db.row(id="kept", sold_at=london(2026, 10, 25, 10, 0))
    # A voided sale need not be a sound one: nothing else of it is read.
    sales_db.insert(kept, {**kept, "id": "refunded", "price": None})
    query = (
        "SELECT sales.*, CASE WHEN id = 'refunded' THEN 'Y' ELSE 'N' END AS is_void FROM sales"
        " WHERE sold_at >= :start AND sold_at < :end ORDER BY sold_at"
    )
    source = open_source(query=query, columns={**sales_db.columns, "voided": "is_void"})

    batches = list(source.read(WINDOW, 100, []))

    assert [ids(batch.sales) for batch in batches] == [["kept"]]
    assert [(batch.voided, batch.rejected) for batch in batches] == [(1, [])]


def test_a_query_that_lacks_a_required_column_is_a_config_error(
    open_source: SourceFactory,
) -> None:
    query = "SELECT id AS sale_id FROM sales WHERE sold_at >= :start AND sold_at < :end"

    with pytest.raises(ConfigError) as error:
        read_all(open_source(query=query, columns={}))
    assert error.value.key == "source.columns.tenant_id"


@pytest.mark.parametrize(
    "hostile",
    [
        {"table": "sales; DROP TABLE sales"},
        {"table": 'sales"; DROP TABLE sales; --'},
        {"columns": {"title": "title FROM sales; DROP TABLE sales; --"}},
        {"columns": {"sale_id": "id`; DROP TABLE sales; --"}},
    ],
    ids=["table", "quoted-table", "column", "backquoted-column"],
)
def test_a_hostile_name_in_config_is_refused_and_the_table_survives(
    sales_db: SalesDatabase, open_source: SourceFactory, hostile: dict[str, Any]
) -> None:
    sales_db.insert(sales_db.row(id="S-1"))
    settings = dict(hostile)
    if "columns" in settings:
        settings["columns"] = {**sales_db.columns, **settings["columns"]}

    with pytest.raises(ConfigError):
        read_all(open_source(**settings))

    assert sales_db.count() == 1


# --- failures ---------------------------------------------------------------------------------

PASSWORD = "hunter2-" + secrets.token_hex(8)


def test_an_unreachable_database_raises_source_error_without_the_password(
    sales_db: SalesDatabase, open_source: SourceFactory, tmp_path: Any
) -> None:
    """A closed port on the servers; a folder that does not exist for SQLite."""
    if sales_db.backend == "sqlite":
        url = f"sqlite:///{tmp_path}/missing/pos.db"
    else:
        url = make_url(sales_db.url).set(port=1, username="exporter").render_as_string()
    source = open_source(url=url, password=PASSWORD, connect_timeout_seconds=2)

    with pytest.raises(SourceError) as error:
        read_all(source)

    message = str(error.value)
    assert PASSWORD not in "".join(traceback.format_exception(error.value))
    where = "missing/pos.db" if sales_db.backend == "sqlite" else "127.0.0.1:1"
    assert where in message


def test_a_query_the_database_refuses_raises_source_error(open_source: SourceFactory) -> None:
    query = "SELECT * FROM receipts WHERE sold_at >= :start AND sold_at < :end"

    with pytest.raises(SourceError, match="receipts"):
        read_all(open_source(query=query))


@pytest.mark.parametrize("sales_db", ["mariadb"], indirect=True)
def test_a_wrong_password_raises_source_error_without_the_password(
    sales_db: SalesDatabase,
    open_source: SourceFactory,
    mariadb_user_with_password: tuple[str, str],
) -> None:
    """MariaDB only: the PostgreSQL server of the test machine trusts loopback connections."""
    user, password = mariadb_user_with_password
    wrong = f"not-{password}"
    url = make_url(sales_db.url).set(username=user).render_as_string()

    with pytest.raises(SourceError, match="Access denied") as error:
        read_all(open_source(url=url, password=wrong))

    assert wrong not in "".join(traceback.format_exception(error.value))
    assert user in str(error.value)


@pytest.mark.parametrize("sales_db", ["mariadb"], indirect=True)
def test_the_password_comes_from_its_own_setting(
    sales_db: SalesDatabase,
    open_source: SourceFactory,
    mariadb_user_with_password: tuple[str, str],
) -> None:
    user, password = mariadb_user_with_password
    sales_db.insert(sales_db.row(id="S-1"))
    url = make_url(sales_db.url).set(username=user).render_as_string()

    sales, _ = read_all(open_source(url=url, password=password))

    assert ids(sales) == ["S-1"]


# --- streaming --------------------------------------------------------------------------------


def reader_is_mid_result(sales_db: SalesDatabase) -> bool:
    """Whether another connection still has the sales SELECT open, its rows not all read.

    PostgreSQL: that session's last statement is a FETCH from a server-side cursor. MariaDB: its
    SELECT is still running, the server waiting to send the rest. SQLite: the unfinished
    statement still holds its shared lock, so an exclusive lock cannot be had.
    """
    url = make_url(sales_db.url)
    if sales_db.backend == "sqlite":
        probe = sqlite3.connect(url.database or "", timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN EXCLUSIVE")
            probe.execute("ROLLBACK")
        except sqlite3.OperationalError as error:
            return "locked" in str(error)
        finally:
            probe.close()
        return False
    with sales_db.engine.connect() as conn:
        if sales_db.backend == "postgresql":
            query = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND query ILIKE 'FETCH%'"
            )
        else:
            query = (
                "SELECT count(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE()"
                " AND ID <> CONNECTION_ID() AND COMMAND = 'Query' AND INFO LIKE 'SELECT%'"
            )
        return bool(conn.execute(sa.text(query)).scalar_one())


def test_the_first_batch_arrives_while_the_rest_is_still_on_the_server(
    sales_db: SalesDatabase, open_source: SourceFactory
) -> None:
    rows = 20_000
    sales_db.insert(
        *(
            sales_db.row(
                id=f"S-{n:05}",
                sold_at=london(2026, 10, 25, 12) + timedelta(seconds=n),
                title="T" * 200,
                photo_url=f"https://photos.example/{'p' * 400}/{n}.jpg",
            )
            for n in range(rows)
        )
    )
    source = open_source(fetch_size=500)

    with closing(source.read(WINDOW, 500, [])) as batches:
        first = next(batches)

        assert ids(first.sales)[:2] == ["S-00000", "S-00001"]
        assert reader_is_mid_result(sales_db)
        assert sum(len(b.sales) for b in batches) == rows - 500
    assert not reader_is_mid_result(sales_db)
