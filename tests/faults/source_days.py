"""A store's day as the source fault tests use it: the POS `sales` table filled with a day of
sales, settings that export it, and a day streamed from a server whose connection another
session can kill (`streamed`, a fixture that tests/faults/conftest.py makes available).
"""

from __future__ import annotations

import dataclasses
import gc
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from smartgo_exporter.config import Settings
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.pipeline import export
from smartgo_exporter.run_records import RunRecord
from smartgo_exporter.runs import BatchDone
from smartgo_exporter.sales import Key
from tests.conftest import SALES_COLUMNS, pos_row

if TYPE_CHECKING:
    from tests.conftest import SalesDatabase

DAY = date(2026, 10, 25)
SERVERS = {"postgresql": "PostgreSQL", "mariadb": "MariaDB", "sqlite": "SQLite"}


# --- a store's day, and an export of it ------------------------------------------------------


def export_settings(
    root: Path,
    url: str,
    *,
    source: Mapping[str, Any] | None = None,
    export: Mapping[str, Any] | None = None,
    **sections: Any,
) -> Settings:
    """Settings for exporting the POS `sales` table at `url` into a warehouse under `root`.

    `source` and `export` entries are added to (or replace) the defaults; a `query` in `source`
    replaces the table. Other sections (`progress`, `embedder`, ...) are given whole.
    """
    source_section: dict[str, Any] = {
        "type": "sql",
        "url": url,
        "table": "sales",
        "columns": dict(SALES_COLUMNS),
        "timezone": "UTC",
        "connect_timeout_seconds": 5,
        **(source or {}),
    }
    if "query" in source_section:
        del source_section["table"]
    sections.setdefault("progress", {"type": "sqlite", "path": str(root / "progress.db")})
    return load_config(
        None,
        source=source_section,
        export={"batch_size": 20, "commit_rows": 20, **(export or {})},
        table={
            "catalog": {
                "type": "sql",
                "uri": f"sqlite:///{root}/warehouse/catalog.db",
                "warehouse": f"file://{root}/warehouse",
            }
        },
        **sections,
    )


def day_of_sales(
    count: int, day: date = DAY, *, prefix: str = "S", start: datetime | None = None
) -> list[dict[str, Any]]:
    """`count` valid rows of the POS `sales` table on `day`, two tenants, no photos."""
    first = start or datetime.combine(day, datetime.min.time()).replace(hour=8)
    return [
        pos_row(
            id=f"{prefix}-{number:04d}",
            store_id=1 + number % 2,
            sold_at=first + timedelta(seconds=30 * number),
            photo_url=None,
        )
        for number in range(count)
    ]


def keys_of(rows: Sequence[Mapping[str, Any]], day: date = DAY) -> dict[Key, date]:
    """The sales of `rows` as the fault matrix counts them: (tenant, sale id) -> business day."""
    return {(str(row["store_id"]), str(row["id"])): day for row in rows}


def only_record(records: Sequence[RunRecord]) -> RunRecord:
    assert len(records) == 1, [str(r.status) for r in records]
    return records[0]


def with_query(url: str, **parameters: str) -> str:
    return make_url(url).update_query_dict(parameters).render_as_string(hide_password=False)


# --- the connection drops in the middle of a day ------------------------------------------


PADDED_DAY = (
    "SELECT sales.*, REPEAT('x', 65536) AS padding FROM sales"
    " WHERE sold_at >= :start AND sold_at < :end ORDER BY sold_at, id"
)
"""A day of 64 KB rows on the wire: far more than socket buffers hold, so MariaDB is still
sending when its connection is killed (PyMySQL streams, but the server writes ahead)."""


def streaming_source(
    sales_db: SalesDatabase, request: pytest.FixtureRequest
) -> tuple[str, dict[str, Any], Callable[[], int]]:
    """(url, source settings, kill) where kill ends the exporter's connection from another one
    and says how many it ended: by application name on PostgreSQL, by user on MariaDB."""
    if sales_db.backend == "postgresql":
        name = f"sgx-fault-{secrets.token_hex(3)}"

        def kill_postgresql() -> int:
            with sales_db.engine.connect() as conn:
                ended = conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE application_name = :name"
                    ),
                    {"name": name},
                ).scalar_one()
                conn.commit()
            return int(ended)

        url = with_query(sales_db.url, application_name=name)
        return url, {"fetch_size": 5}, kill_postgresql

    user, password = request.getfixturevalue("mariadb_user_with_password")

    def kill_mariadb() -> int:
        with sales_db.engine.connect() as conn:
            ids = conn.execute(
                sa.text("SELECT id FROM information_schema.processlist WHERE user = :user"),
                {"user": user},
            ).scalars()
            ended = [conn.execute(sa.text(f"KILL CONNECTION {int(id_)}")) for id_ in ids]
        return len(ended)

    reader = make_url(sales_db.url).set(username=user, password=password)
    return reader.render_as_string(hide_password=False), {"query": PADDED_DAY}, kill_mariadb


def on_servers_that_kill(test: Callable[..., None]) -> Callable[..., None]:
    """Run `test` on PostgreSQL and MariaDB, whose sessions another session can kill."""
    on_both = pytest.mark.parametrize("sales_db", ["postgresql", "mariadb"], indirect=True)
    # PyMySQL's cursor, collected after its connection died, fails to drain it: only noise.
    quiet = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
    return on_both(quiet(test))


@dataclasses.dataclass(frozen=True)
class StreamedDay:
    """A day of 300 sales at the source, settings that stream it, and the kill of that stream."""

    sales_db: SalesDatabase
    rows: list[dict[str, Any]]
    settings: Settings
    kill: Callable[[], int]


@pytest.fixture
def streamed(
    sales_db: SalesDatabase, request: pytest.FixtureRequest, tmp_path: Path
) -> StreamedDay:
    rows = day_of_sales(300)
    sales_db.insert(*rows)
    url, source, kill = streaming_source(sales_db, request)
    return StreamedDay(sales_db, rows, export_settings(tmp_path, url, source=source), kill)


def export_killed_after_the_first_commit(
    settings: Settings, kill: Callable[[], int]
) -> list[RunRecord]:
    """Export DAY, ending the source's connection (`kill`) once its first batch is committed."""
    killed: list[int] = []

    def kill_after_the_first_batch(done: BatchDone) -> None:
        if not killed:
            killed.append(kill())

    records = export(settings, [DAY], on_batch=kill_after_the_first_batch)
    gc.collect()
    assert killed[0] >= 1, "no connection to kill"
    return records
