"""Sales from a SQL database through SQLAlchemy 2: PostgreSQL (psycopg 3), MySQL/MariaDB (PyMySQL)
and SQLite.

Say what to read in one of two ways:

- `table` (with optional `schema`) and `columns`, sale field -> column; an unmapped field is
  looked up under its own name, and an optional field the table lacks is simply absent. The
  table is reflected from the database's own catalog and the SELECT is built with SQLAlchemy
  Core, so every name in the configuration must exist there and no name can change the
  statement. The source filters the window (and tenants) and orders by sold_at, sale id.
- `query`, a full SELECT with `:start` and `:end` bind parameters. Result columns are matched
  to fields through the same `columns` mapping (field -> result column, falling back to the field
  name); a tenant filter is applied here, after the query.

Time. A window is a half-open span of UTC instants; the database's naive timestamps are read as
wall-clock time in `config.timezone`. How the bounds are bound, per backend:

- PostgreSQL: the session TimeZone is `config.timezone` and the bounds are aware instants, so
  `timestamp` columns (cast in the session zone) and `timestamptz` columns both compare exactly.
- MySQL/MariaDB: the session time_zone is pinned to UTC, which needs no time zone tables on the
  server. DATETIME columns are wall-clock, so the bounds are bound as naive wall-clock times in
  `config.timezone`; TIMESTAMP columns are instants, so in table mode a TIMESTAMP sold_at gets
  naive UTC bounds, and TIMESTAMP values read in either mode are taken as UTC. In query mode
  :start and :end are always wall-clock (the DATETIME convention).
- SQLite stores datetimes as text, written however the application chose. In table mode each
  candidate's text is read by a function registered on the connection, exactly as `parse_sale`
  reads it (naive text in `config.timezone`, an explicit offset or Z honoured), and compared as
  UTC; a plain text range on the column in front of it lets SQLite use an index. Text that is not
  an ISO 8601 timestamp belongs to no window. In query mode :start and :end are bound as
  'YYYY-MM-DD HH:MM:SS' text in `config.timezone`.

Rows stream from a server-side cursor (psycopg) or an unbuffered one (PyMySQL SSCursor), so a
window of a million sales is never in memory at once. Nothing here writes; on PostgreSQL the
transaction is read-only as well.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Iterator, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url

from smartgo_exporter.config import SqlSourceConfig
from smartgo_exporter.errors import ConfigError, SourceError
from smartgo_exporter.sales import REQUIRED_SALE_FIELDS, SOURCE_FIELDS
from smartgo_exporter.sources import SaleBatch, parse_batches
from smartgo_exporter.windows import Window

_SQLITE_INSTANT = "smartgo_instant"
"""The SQL function, registered on each SQLite connection, that turns stored text into UTC text."""

_SQLITE_INSTANT_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
_MYSQL_TIMESTAMP_TYPE_CODE = 7
"""pymysql.constants.FIELD_TYPE.TIMESTAMP: a column holding instants rather than wall-clock."""


class SqlSource:
    """The `Source` over a SQL database (see the module docstring for what is read and how).

    One engine per source, its pool reused across windows, so a catch-up of seven days connects
    once:

        config = SqlSourceConfig(url="sqlite:///pos.db", table="sales", columns={"sale_id": "id"})
        source = SqlSource(config)
        for batch in source.read(business_day(date(2026, 10, 25), "Europe/London"), 500, []):
            ...
        source.close()
    """

    def __init__(self, config: SqlSourceConfig) -> None:
        self._config = config
        self._zone = ZoneInfo(config.timezone)
        try:
            url = make_url(config.url.get_secret_value())
        except sa_exc.ArgumentError:
            raise ConfigError("source.url", "not a SQLAlchemy database URL") from None
        if config.password is not None and url.get_driver_name() != "pysqlite":
            url = url.set(password=config.password.get_secret_value())
        self._url = url
        # Drivers do not echo passwords; this is a second line of defence, and a very short
        # password is left alone rather than blot out ordinary words of the message.
        self._secrets = [str(url.password)] if url.password and len(str(url.password)) >= 4 else []
        self._backend = url.get_backend_name()
        self._reflected: dict[str, sa.Table] = {}
        try:
            self._engine = self._create_engine(url)
        except (sa_exc.ArgumentError, ImportError) as error:
            raise ConfigError("source.url", self._redact(str(error))) from None

    def read(
        self, window: Window, batch_size: int, tenant_ids: list[str]
    ) -> Generator[SaleBatch, None, None]:
        """Batches of at most `batch_size` rows, built as rows arrive from the cursor.

        Close the generator to give the connection back early; on MySQL/MariaDB that still reads
        the unread rows, which PyMySQL must drain before the connection can be used again.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        try:
            with self._engine.connect() as conn:
                if self._backend == "postgresql":
                    conn = conn.execution_options(postgresql_readonly=True)
                if self._config.table is not None:
                    plan = self._table_plan(conn, self._config.table, window, tenant_ids)
                else:
                    plan = self._query_plan(window)
                streaming = conn.execution_options(
                    stream_results=True, yield_per=self._config.fetch_size
                )
                result = streaming.execute(plan.statement, plan.params)
                yield from parse_batches(
                    self._rows(result, plan, set(tenant_ids)),
                    batch_size,
                    self._zone,
                    self._config.currency_case,
                )
        except sa_exc.SQLAlchemyError as error:
            raise SourceError(self._describe(error)) from None

    def close(self) -> None:
        self._engine.dispose()

    # --- the engine -----------------------------------------------------------------------------

    def _create_engine(self, url: URL) -> Engine:
        timeout = self._config.connect_timeout_seconds
        connect_args: dict[str, Any] = {}
        # Session settings the URL itself asks for (`?options=-c statement_timeout=60000` on
        # PostgreSQL, `?init_command=SET max_statement_time=60` on MariaDB) are kept: ours are
        # added to them, never put in their place.
        if self._backend == "postgresql":
            # The zone name was validated against the tz database, so it holds no space or quote.
            given = url.query.get("options", ())
            options = [given] if isinstance(given, str) else list(given)
            options.append(f"-c TimeZone={self._config.timezone}")
            connect_args = {"connect_timeout": timeout, "options": " ".join(options)}
        elif self._backend in ("mysql", "mariadb"):
            connect_args = {"connect_timeout": timeout}
        engine = sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
        if self._backend in ("mysql", "mariadb"):

            @sa.event.listens_for(engine, "connect")
            def _pin_utc(dbapi_connection: Any, _record: Any) -> None:
                with dbapi_connection.cursor() as cursor:
                    cursor.execute("SET time_zone = '+00:00'")

        if self._backend == "sqlite":
            zone = self._zone

            @sa.event.listens_for(engine, "connect")
            def _register_instant(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.create_function(
                    _SQLITE_INSTANT, 1, lambda text: _utc_text(text, zone), deterministic=True
                )

        return engine

    # --- what to run ----------------------------------------------------------------------------

    def _table_plan(
        self, conn: Connection, name: str, window: Window, tenant_ids: list[str]
    ) -> _Plan:
        table = self._reflect(conn, name)
        fields: dict[str, sa.ColumnElement[Any]] = {}
        for field in SOURCE_FIELDS:
            column = _find_column(table, self._config.columns.get(field, field))
            if column is not None:
                fields[field] = column
            elif field in self._config.columns:
                raise ConfigError(
                    f"source.columns.{field}",
                    f"table {table.fullname!r} has no column {self._config.columns[field]!r}",
                )
            elif field in REQUIRED_SALE_FIELDS:
                raise ConfigError(
                    f"source.columns.{field}",
                    f"table {table.fullname!r} has no column {field!r}; map {field} to one",
                )
        sold_at, sale_id, tenant = fields["sold_at"], fields["sale_id"], fields["tenant_id"]
        # NullType: values come as the driver gives them, so parse_sale (not a type processor
        # that raises mid-stream) decides what a malformed value means.
        statement = (
            sa.select(*(sa.type_coerce(c, sa.types.NullType()).label(f) for f, c in fields.items()))
            .where(*self._window_filter(sold_at, window))
            .order_by(sold_at, sale_id)
        )
        if tenant_ids:
            statement = statement.where(tenant.in_(_tenant_values(tenant, tenant_ids)))
        return _Plan(statement, {}, {f: f for f in fields}, frozenset(), filter_tenants=False)

    def _reflect(self, conn: Connection, name: str) -> sa.Table:
        """The configured table, found in the lists of schemas and tables the catalog gives.

        A configured name is only ever compared with those lists, never put into a statement,
        so no spelling of it reaches the server; the table is then reflected under the
        catalog's own spelling (a name that matches one table only when case is ignored means
        that table, as with columns). It is reflected once per source, not for every window:
        a 31-day backfill spent a tenth of its warm re-run in the catalog's answers.
        """
        if name in self._reflected:
            return self._reflected[name]
        schema = self._config.db_schema
        inspector = sa.inspect(conn)
        if schema is not None and schema not in inspector.get_schema_names():
            raise ConfigError("source.schema", f"no schema {schema!r} in {self._where()}")
        tables = [*inspector.get_table_names(schema=schema), *inspector.get_view_names(schema)]
        found = _find_name(tables, name)
        if found is None:
            raise ConfigError("source.table", f"no table {name!r} in {self._where()}")
        try:
            table = sa.Table(found, sa.MetaData(), schema=schema, autoload_with=conn)
        except sa_exc.NoSuchTableError:
            raise ConfigError("source.table", f"no table {name!r} in {self._where()}") from None
        self._reflected[name] = table
        return table

    def _window_filter(
        self, sold_at: sa.ColumnElement[Any], window: Window
    ) -> list[sa.ColumnElement[bool]]:
        if self._backend == "sqlite":
            # Only what the text alone cannot settle goes to the Python instant function, the
            # most of a day's read: text written with an offset lies within two days of the
            # window's local dates, and text without one (the usual) within its local dates.
            first, last = window.start, window.end - timedelta(microseconds=1)
            first_date, last_date = (
                first.astimezone(self._zone).date(),
                last.astimezone(self._zone).date(),
            )

            def text(value: str) -> sa.ColumnElement[str]:
                return sa.literal(value, sa.String())

            with_offset = sa.func.substr(sold_at, 11).op("GLOB")(text("*[-+Zz]*"))
            instant = getattr(sa.func, _SQLITE_INSTANT)(sold_at)
            return [
                sold_at >= text((first_date - timedelta(days=2)).isoformat()),
                sold_at < text((last_date + timedelta(days=3)).isoformat()),
                sa.or_(
                    with_offset,
                    sa.and_(
                        sold_at >= text(first_date.isoformat()),
                        sold_at < text((last_date + timedelta(days=1)).isoformat()),
                    ),
                ),
                # BETWEEN calls the function once a row, where >= and < called it twice; the
                # instant text has microseconds, so the end's last microsecond closes it.
                instant.between(
                    text(first.strftime(_SQLITE_INSTANT_FORMAT)),
                    text(last.strftime(_SQLITE_INSTANT_FORMAT)),
                ),
            ]
        if self._backend in ("mysql", "mariadb") and isinstance(sold_at.type, sa.TIMESTAMP):
            start, end = _naive(window.start, UTC), _naive(window.end, UTC)
        else:
            start, end = self._bounds(window)
        return [sold_at >= start, sold_at < end]

    def _query_plan(self, window: Window) -> _Plan:
        assert self._config.query is not None
        start: datetime | str
        end: datetime | str
        start, end = self._bounds(window)
        if self._backend == "sqlite":
            start, end = f"{start:%Y-%m-%d %H:%M:%S}", f"{end:%Y-%m-%d %H:%M:%S}"
        keys = {field: self._config.columns.get(field, field) for field in SOURCE_FIELDS}
        required = frozenset(REQUIRED_SALE_FIELDS) | frozenset(self._config.columns)
        params = {"start": start, "end": end}
        return _Plan(sa.text(self._config.query), params, keys, required, filter_tenants=True)

    def _bounds(self, window: Window) -> tuple[datetime, datetime]:
        if self._backend == "postgresql":
            return window.start, window.end
        return _naive(window.start, self._zone), _naive(window.end, self._zone)

    # --- reading --------------------------------------------------------------------------------

    def _rows(
        self, result: sa.CursorResult[Any], plan: _Plan, tenants: set[str]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        columns = _result_columns(result, plan)
        utc = {i for i, *_ in columns if _holds_instants(self._backend, result, i)}
        filter_tenants = plan.filter_tenants and bool(tenants)
        for position, row in enumerate(result, start=1):
            raw: dict[str, Any] = {}
            for index, field in columns:
                value = row[index]
                if index in utc and isinstance(value, datetime) and value.tzinfo is None:
                    value = value.replace(tzinfo=UTC)
                raw[field] = value
            if filter_tenants and not _tenant_matches(raw.get("tenant_id"), tenants):
                continue
            yield position, raw

    # --- errors ---------------------------------------------------------------------------------

    def _where(self) -> str:
        return self._url.render_as_string(hide_password=True)

    def _describe(self, error: sa_exc.SQLAlchemyError) -> str:
        cause = getattr(error, "orig", None) or error
        reason = " ".join(str(cause).split()) or type(cause).__name__
        return self._redact(f"cannot read sales from {self._where()}: {reason}")

    def _redact(self, message: str) -> str:
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return message


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    statement: sa.Executable
    params: dict[str, Any]
    keys: dict[str, str]
    """Sale field -> result column name."""
    required: frozenset[str]
    """Fields whose column must be in the result: the required ones and those mapped explicitly."""
    filter_tenants: bool
    """Whether the tenant filter is left to Python (query mode)."""


def _find_column(table: sa.Table, name: str) -> sa.Column[Any] | None:
    found = _find_name([column.name for column in table.c], name)
    return None if found is None else table.c[found]


def _find_name(names: Sequence[str], name: str) -> str | None:
    """`name` as spelled in `names`: itself, or the one name equal to it but for case."""
    if name in names:
        return name
    folded = [candidate for candidate in names if candidate.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def _result_columns(result: sa.CursorResult[Any], plan: _Plan) -> list[tuple[int, str]]:
    """(result index, sale field) pairs; a required or mapped column that is missing is an error."""
    names = list(result.keys())
    folded = {name.lower(): i for i, name in reversed(list(enumerate(names)))}
    pairs: list[tuple[int, str]] = []
    for field, key in plan.keys.items():
        index = names.index(key) if key in names else folded.get(key.lower())
        if index is not None:
            pairs.append((index, field))
        elif field in plan.required:
            result.close()
            raise ConfigError(
                f"source.columns.{field}", f"the query returns no column {key!r} (only {names})"
            )
    return pairs


def _holds_instants(backend: str, result: sa.CursorResult[Any], index: int) -> bool:
    if backend not in ("mysql", "mariadb"):
        return False
    description = result.cursor.description if result.cursor is not None else None
    return bool(description) and description[index][1] == _MYSQL_TIMESTAMP_TYPE_CODE


def _tenant_values(column: sa.ColumnElement[Any], tenant_ids: Sequence[str]) -> list[Any]:
    """Tenant ids as the column holds them: a tenant "7" is the integer 7 in an INTEGER column.

    An id that no integer prints as (such as "07" or "north") cannot match an integer column,
    exactly as it could not match the text parse_sale makes of it.
    """
    try:
        is_integer = column.type.python_type is int
    except NotImplementedError:
        is_integer = False
    if not is_integer:
        return list(tenant_ids)
    values: list[Any] = []
    for tenant in tenant_ids:
        try:
            number = int(tenant)
        except ValueError:
            continue
        if str(number) == tenant:
            values.append(number)
    return values


def _tenant_matches(value: Any, tenants: set[str]) -> bool:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value is not None and str(value).strip() in tenants


def _naive(instant: datetime, zone: tzinfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _utc_text(text: Any, zone: tzinfo) -> str | None:
    """Stored SQLite text -> fixed-width UTC text that sorts as time does, or None if unreadable."""
    if not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(UTC).strftime(_SQLITE_INSTANT_FORMAT)
