"""Shared fixtures: real databases on every SQL backend, and a point-of-sale `sales` table.

Each backend gets one fresh, empty database per test session, dropped at the end:

- `sqlite_database`: a SQLite file under pytest's tmp folder.
- `postgresql_database`: `postgresql+psycopg://postgres@127.0.0.1:5432/<random name>`.
- `mariadb_database`: `mysql+pymysql://root@127.0.0.1:3306/<random name>`.

A server that is not reachable fails the test with what to install or start: these tests are
the specification of the SQL source, and a skipped one proves nothing.

`sales_db` is parametrized over the three backends (ids sqlite, postgresql, mariadb) and gives a
`SalesDatabase`: the URL of a database holding an empty `sales` table shaped like a real POS
table, whose column names differ from the sale fields (`SalesDatabase.columns` is the mapping),
and `insert` to add rows. End-to-end tests use it like this:

    def test_a_day_lands_in_the_table(sales_db):
        sales_db.insert(sales_db.row(id="S-1", sold_at=datetime(2026, 10, 25, 12, 0)))
        config = SqlSourceConfig(url=sales_db.url, table="sales", columns=sales_db.columns)

`store` is the small demo store (tests/demo_store.py) with its photo server, once per session;
`workspace` is a test's own copy of it, with its own warehouse and run history.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from smartgo_exporter.demo import DemoCatalog, DemoPaths
from tests.demo_store import copy_of_store, serve_demo_store

POSTGRESQL_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MARIADB_ADMIN_URL = "mysql+pymysql://root@127.0.0.1:3306/"
BACKENDS = ("sqlite", "postgresql", "mariadb")

SALES_COLUMNS = {
    "sale_id": "id",
    "tenant_id": "store_id",
    "product_id": "sku",
    "sold_at": "sold_at",
    "sale_price": "price",
    "list_price": "list_price",
    "currency": "currency",
    "title": "title",
    "brand": "brand",
    "category": "category",
    "condition": "item_condition",
    "image_url": "photo_url",
    "source_updated_at": "updated_at",
}
"""Sale field -> column of the `sales` table, as `SqlSourceConfig.columns` takes it."""

_SALES_DDL = {
    "sqlite": """
        CREATE TABLE {name} (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            store_id INTEGER NOT NULL,
            sku VARCHAR(64),
            sold_at DATETIME NOT NULL,
            price NUMERIC(12, 2),
            list_price NUMERIC(12, 2),
            currency CHAR(3),
            title VARCHAR(200),
            brand VARCHAR(100),
            category VARCHAR(100),
            item_condition VARCHAR(20),
            photo_url VARCHAR(500),
            updated_at DATETIME
        )""",
    "postgresql": """
        CREATE TABLE {name} (
            id varchar(36) NOT NULL PRIMARY KEY,
            store_id integer NOT NULL,
            sku varchar(64),
            sold_at {sold_at_type} NOT NULL,
            price numeric(12, 2),
            list_price numeric(12, 2),
            currency char(3),
            title varchar(200),
            brand varchar(100),
            category varchar(100),
            item_condition varchar(20),
            photo_url varchar(500),
            updated_at timestamptz
        )""",
    "mariadb": """
        CREATE TABLE {name} (
            id VARCHAR(36) NOT NULL PRIMARY KEY,
            store_id INT NOT NULL,
            sku VARCHAR(64),
            sold_at {sold_at_type} NOT NULL,
            price DECIMAL(12, 2),
            list_price DECIMAL(12, 2),
            currency CHAR(3),
            title VARCHAR(200),
            brand VARCHAR(100),
            category VARCHAR(100),
            item_condition VARCHAR(20),
            photo_url VARCHAR(500),
            updated_at TIMESTAMP NULL DEFAULT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
}
_SOLD_AT_TYPES = {
    # naive wall-clock, instant
    "sqlite": ("DATETIME", "DATETIME"),
    "postgresql": ("timestamp", "timestamptz"),
    "mariadb": ("DATETIME", "TIMESTAMP"),
}

pytest_plugins = ["tests.servers.moto", "tests.servers.bedrock", "tests.servers.seaweedfs"]


def pos_row(**values: Any) -> dict[str, Any]:
    """A valid row of the `sales` table; pass column values (`id`, `sold_at`, ...) to change it.

    Give `sold_at` as a naive datetime for wall-clock time in the source's time zone; an aware
    one is stored as an instant (see `SalesDatabase.insert`).
    """
    row: dict[str, Any] = {
        "id": "S-1",
        "store_id": 1,
        "sku": "SKU-1",
        "sold_at": datetime(2026, 10, 25, 12, 0, 0),
        "price": Decimal("19.99"),
        "list_price": Decimal("25.00"),
        "currency": "EUR",
        "title": "Denim jacket",
        "brand": "Levi's",
        "category": "Jackets",
        "item_condition": "good",
        "photo_url": "https://photos.example/S-1.jpg",
        "updated_at": None,
    }
    unknown = set(values) - set(row)
    if unknown:
        raise TypeError(f"the sales table has no columns {sorted(unknown)}")
    row.update(values)
    return row


@dataclasses.dataclass
class SalesDatabase:
    """A database on one backend, holding an empty POS `sales` table (fresh for each test).

    `url` is a plain SQLAlchemy URL string, `columns` the sale field -> column mapping for
    `SqlSourceConfig`. `insert` writes rows as a POS application would: on SQLite datetimes
    become text, 'YYYY-MM-DD HH:MM:SS' for naive ones (the way most applications write them)
    and ISO 8601 with the offset for aware ones; on MariaDB an aware datetime is written as UTC,
    which is what a TIMESTAMP column holds.
    """

    backend: str
    url: str
    engine: sa.Engine
    columns: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(SALES_COLUMNS))

    def create_sales_table(self, name: str = "sales", *, instant_sold_at: bool = False) -> None:
        """(Re)create a table shaped like `sales`.

        With `instant_sold_at`, sold_at holds instants rather than wall-clock time: timestamptz
        on PostgreSQL, TIMESTAMP on MariaDB, ISO text with an offset on SQLite.
        """
        sold_at_type = _SOLD_AT_TYPES[self.backend][1 if instant_sold_at else 0]
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
            conn.execute(
                sa.text(_SALES_DDL[self.backend].format(name=name, sold_at_type=sold_at_type))
            )
            conn.execute(sa.text(f"CREATE INDEX {name}_sold_at ON {name} (sold_at)"))

    def row(self, **values: Any) -> dict[str, Any]:
        """A valid row of the `sales` table with some columns changed; see `pos_row`."""
        return pos_row(**values)

    def insert(self, *rows: Mapping[str, Any], table: str = "sales") -> None:
        """Insert rows keyed by column name (see `pos_row`) in one transaction."""
        if not rows:
            return
        stored = [{k: self._stored(v) for k, v in row.items()} for row in rows]
        target = sa.table(table, *(sa.column(name) for name in stored[0]))
        with self.engine.begin() as conn:
            conn.execute(sa.insert(target), stored)

    def update(self, sale_id: str, table: str = "sales", **values: Any) -> None:
        """Set columns of the row with id `sale_id`, values written as `insert` writes them."""
        target = sa.table(table, sa.column("id"), *(sa.column(name) for name in values))
        stored = {name: self._stored(value) for name, value in values.items()}
        with self.engine.begin() as conn:
            conn.execute(sa.update(target).where(target.c.id == sale_id).values(**stored))

    def count(self, table: str = "sales") -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar_one()
            )

    def _stored(self, value: Any) -> Any:
        if self.backend == "sqlite":
            if isinstance(value, datetime):
                return value.isoformat(" ") if value.tzinfo else f"{value:%Y-%m-%d %H:%M:%S}"
            if isinstance(value, Decimal):
                return str(value)
        if self.backend == "mariadb" and isinstance(value, datetime) and value.tzinfo:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value


# --- one database per backend and session ----------------------------------------------------


def _random_name() -> str:
    return f"sgx_test_{secrets.token_hex(4)}"


def _admin_engine(url: str, server: str, hint: str) -> sa.Engine:
    """An autocommit engine on the server's admin database, or a failed test saying what to do."""
    engine = sa.create_engine(
        url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as error:
        engine.dispose()
        reason = " ".join(str(error.orig).split())
        where = f"{make_url(url).host}:{make_url(url).port}"
        pytest.fail(f"{server} is not reachable on {where} ({reason}): {hint}", pytrace=False)
    return engine


def _scratch_database(admin: sa.Engine, *, create: str, drop: str) -> Iterator[str]:
    """Yield the URL of a new database on `admin`'s server; drop it and dispose `admin` after.

    `create` and `drop` are the server's own statements, with `{name}` for the database's name.
    """
    name = _random_name()
    with admin.connect() as conn:
        conn.execute(sa.text(create.format(name=name)))
    try:
        yield admin.url.set(database=name).render_as_string()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(drop.format(name=name)))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of an empty SQLite file, for this test session."""
    path: Path = tmp_path_factory.mktemp("sqlite") / "pos.db"
    yield f"sqlite:///{path}"
    path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def postgresql_database() -> Iterator[str]:
    """URL of an empty PostgreSQL database on 127.0.0.1:5432, created for this test session."""
    admin = _admin_engine(
        POSTGRESQL_ADMIN_URL,
        "PostgreSQL",
        "install postgresql (apt-get install postgresql) and start it with "
        "`pg_ctlcluster --skip-systemctl-redirect 15 main start`; the tests connect as "
        "postgres without a password (trust auth on 127.0.0.1)",
    )
    yield from _scratch_database(
        admin,
        create='CREATE DATABASE "{name}"',
        drop='DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
    )


@pytest.fixture(scope="session")
def mariadb_database() -> Iterator[str]:
    """URL of an empty MariaDB database on 127.0.0.1:3306, created for this test session."""
    admin = _admin_engine(
        MARIADB_ADMIN_URL,
        "MariaDB",
        "install mariadb-server (apt-get install mariadb-server) and start it with "
        "`service mariadb start`; the tests connect as root with an empty password",
    )
    yield from _scratch_database(
        admin,
        create="CREATE DATABASE `{name}` CHARACTER SET utf8mb4",
        drop="DROP DATABASE IF EXISTS `{name}`",
    )


@pytest.fixture
def mariadb_user_with_password(mariadb_database: str) -> Iterator[tuple[str, str]]:
    """(user, password) of a MariaDB user that may read `mariadb_database`; dropped after.

    root has no password on the test server, so this is how a test sees password handling.
    """
    admin = sa.create_engine(MARIADB_ADMIN_URL, isolation_level="AUTOCOMMIT")
    user, password = f"sgx_reader_{secrets.token_hex(3)}", f"pw-{secrets.token_hex(12)}"
    database = make_url(mariadb_database).database
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
        conn.execute(sa.text(f"GRANT SELECT ON `{database}`.* TO '{user}'@'%'"))
    try:
        yield user, password
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'%'"))
        admin.dispose()


@pytest.fixture(scope="session")
def _backend_engines() -> Iterator[dict[str, sa.Engine]]:
    engines: dict[str, sa.Engine] = {}
    yield engines
    for engine in engines.values():
        engine.dispose()


def _test_engine(backend: str, url: str) -> sa.Engine:
    """An engine for setting up tables; a lock left behind by a failed test fails the next fast."""
    if backend == "mariadb":
        # UTC, as the source's session is, so TIMESTAMP values go in as they come out.
        init = "SET time_zone = '+00:00', lock_wait_timeout = 10"
        return sa.create_engine(url, connect_args={"init_command": init})
    if backend == "postgresql":
        return sa.create_engine(url, connect_args={"options": "-c lock_timeout=10s"})
    return sa.create_engine(url)


@pytest.fixture(params=BACKENDS)
def sales_db(
    request: pytest.FixtureRequest, _backend_engines: dict[str, sa.Engine]
) -> SalesDatabase:
    """A `SalesDatabase` with an empty `sales` table, on each backend in turn."""
    backend: str = request.param
    url = str(request.getfixturevalue(f"{backend}_database"))
    engine = _backend_engines.get(backend)
    if engine is None:
        engine = _backend_engines[backend] = _test_engine(backend, url)
    database = SalesDatabase(backend=backend, url=url, engine=engine)
    database.create_sales_table()
    return database


# --- the demo store, for the end-to-end tests ------------------------------------------------


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DemoPaths, DemoCatalog]]:
    """A small demo store (3 days, ~120 sales) whose photo server runs for the whole session."""
    with serve_demo_store(tmp_path_factory.mktemp("store")) as served:
        yield served


@pytest.fixture(scope="session")
def large_store(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[DemoPaths, DemoCatalog]]:
    """300 sales over the same 3 days: more distinct photos than a Bedrock batch job's minimum."""
    with serve_demo_store(tmp_path_factory.mktemp("large-store"), sales=300) as served:
        yield served


@pytest.fixture
def workspace(store: tuple[DemoPaths, DemoCatalog], tmp_path: Path) -> DemoPaths:
    """This test's own copy of the store's database, and its own warehouse and run history."""
    return copy_of_store(store[0], tmp_path)
