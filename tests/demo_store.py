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
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serve_demo_store(
    folder: Path, *, first_day: date = FIRST_DAY, days: int = DAYS, sales: int = SALES
) -> Iterator[tuple[DemoPaths, DemoCatalog]]:
    """A demo store built in `folder`, its photos served while the block runs.

    The port is picked before the database is built because the photo URLs stored in it name it.
    """
    paths = DemoPaths(folder)
    port = free_port()
    catalog = build_sales_database(
        paths.sales_db,
        photo_base_url=photo_base_url(port=port),
        first_day=first_day,
        days=days,
        sales=sales,
    )
    render_photos(paths.photos, catalog.products, seed=catalog.seed)
    with serve_photos(paths.photos, port=port):
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
