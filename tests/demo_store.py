"""The demo store as the end-to-end tests use it: built in a folder with its photos served over
HTTP on a free port, copied into a test's own folder with the demo config, and the table its
export wrote read back.

The `store` and `workspace` fixtures in conftest.py are the usual way in; a module that needs a
store of other days, or one of its own, builds it with `serve_demo_store`.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.expressions import NotNull

import smartgo_exporter.demo
from smartgo_exporter.config import Settings
from smartgo_exporter.demo import (
    DemoCatalog,
    DemoPaths,
    build_sales_database,
    photo_base_url,
    render_photos,
    serve_photos,
    write_demo_config,
)
from smartgo_exporter.sinks.iceberg import SalesTable

FIRST_DAY = date(2026, 10, 5)
DAYS = 3
SALES = 120


@contextlib.contextmanager
def held_port() -> Iterator[socket.socket]:
    """A socket bound to a free port of 127.0.0.1, and kept bound while the block runs.

    The demo's photo URLs name the port, so it must be known before the photo server starts.
    Closing a probe and binding its number again would leave a moment in which another process
    could take the port; handing this socket to the server (`serve_photos(listener=...)`)
    leaves none.
    """
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held


def port_of(held: socket.socket) -> int:
    return int(held.getsockname()[1])


def serve_demo_photos_on(monkeypatch: pytest.MonkeyPatch, held: socket.socket) -> None:
    """Make `run_demo` (and so `smartgo-exporter demo`) serve its photos on `held`, for a test
    that runs the demo with `port=port_of(held)`.

    Each run's server gets a duplicate of the socket, since a server closes its socket when it
    stops: `held` stays bound between runs, so the port cannot be taken between them either.
    """

    def serve(
        folder: Path, host: str = "", port: int = 0
    ) -> contextlib.AbstractContextManager[str]:
        assert port == port_of(held), "the demo was run on another port than the held one"
        return serve_photos(folder, listener=held.dup())

    monkeypatch.setattr(smartgo_exporter.demo, "serve_photos", serve)


@contextlib.contextmanager
def serve_demo_store(
    folder: Path, *, first_day: date = FIRST_DAY, days: int = DAYS, sales: int = SALES
) -> Iterator[tuple[DemoPaths, DemoCatalog]]:
    """A demo store built in `folder`, its photos served while the block runs.

    The port is bound before the database is built because the photo URLs stored in it name it,
    and stays bound until the photo server takes the socket over.
    """
    paths = DemoPaths(folder)
    with held_port() as listener:
        catalog = build_sales_database(
            paths.sales_db,
            photo_base_url=photo_base_url(port=port_of(listener)),
            first_day=first_day,
            days=days,
            sales=sales,
        )
        render_photos(paths.photos, catalog.products, seed=catalog.seed)
        with serve_photos(paths.photos, listener=listener):
            yield paths, catalog


def copy_of_store(store: DemoPaths, folder: Path) -> DemoPaths:
    """A copy of the store's database in `folder`, with the demo config: a warehouse and a run
    history of its own, and photos still fetched from the store's server."""
    paths = DemoPaths(folder)
    shutil.copy(store.sales_db, paths.sales_db)
    write_demo_config(paths)
    return paths


def table_rows(settings: Settings) -> pa.Table:
    return SalesTable.open(settings.table, source="smartgo").table.scan().to_arrow()


def distinct_keys(rows: pa.Table) -> int:
    separator = pa.scalar("/", pa.large_string())
    keys = pc.binary_join_element_wise(rows["tenant_id"], rows["sale_id"], separator)
    return int(pc.count_distinct(keys).as_py())


def age_photo_failures(settings: Settings, by: timedelta) -> int:
    """Move every photo failure the table records `by` into the past, as if the runs that
    failed them had run that much earlier, so a test of the retry schedule need not wait days;
    the number of rows moved."""
    table = SalesTable.open(settings.table, source=settings.export.source_name)
    failed = table.table.scan(row_filter=NotNull("photo_failed_at")).to_arrow()
    if failed.num_rows:
        aged = pc.subtract(failed["photo_failed_at"], pa.scalar(by, pa.duration("us")))
        position = failed.schema.get_field_index("photo_failed_at")
        failed = failed.set_column(position, "photo_failed_at", aged)
        table.upsert(failed, run_id="test-aged-failures")
    return failed.num_rows
