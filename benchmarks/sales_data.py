"""Synthetic sales for the benchmarks: one business day in a SQLite store database, no photos.

The database has the demo store's `sales` table (its POS column names, money as decimal text,
naive UTC timestamps as text), so the exporter reads it through the same column mapping the demo
writes into its config. Every `photo_url` is NULL: these benchmarks measure the SQL-to-Iceberg
path alone, and a sale without a photo is settled as `no_image` without any download or model
call. The same seed gives the same rows.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from pathlib import Path
from time import perf_counter
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import load_catalog

from smartgo_exporter import export
from smartgo_exporter.allocator import unmap_large_blocks
from smartgo_exporter.config import Settings
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.demo.store import INSERT_SALE, SALE_COLUMNS, SALES_TABLE, SCHEMA
from smartgo_exporter.logs import configure_logging
from smartgo_exporter.run_records import RunStatus

BUSINESS_DAY = date(2026, 10, 21)
TENANTS = (("ldn-camden", "GBP", 0.40), ("ber-mitte", "EUR", 0.33), ("ams-jordaan", "EUR", 0.27))
"""(store id, currency, share of the sales): the demo's three stores."""

_BRANDS = ("Uniqlo", "COS", "Levi's", "Patagonia", "Dr. Martens", "Barbour", "Nike", "Arket")
_ITEMS = (
    ("T-shirt", "Tops"),
    ("jumper", "Knitwear"),
    ("jeans", "Trousers"),
    ("dress", "Dresses"),
    ("jacket", "Outerwear"),
    ("boots", "Shoes"),
)
_COLOURS = ("black", "navy", "grey", "olive", "red", "cream", "sky blue")
_CONDITIONS = ("new", "like new", "good", "fair")


def write_sales_database(
    path: Path,
    sales: int,
    *,
    day: date = BUSINESS_DAY,
    days: int = 1,
    first_id: int = 1,
    seed: int = 0,
) -> None:
    """Write `sales` sales sold on `day` (UTC), or over the `days` days that end with it, into
    a new SQLite database at `path`, their ids counting from `first_id`."""
    if path.exists():
        raise FileExistsError(path)
    connection = sqlite3.connect(path)
    try:
        connection.executescript(SCHEMA)  # the demo store's tables; only `sales` is filled
        with connection:
            rows = _rows(sales, day, days, first_id, random.Random(seed))
            connection.executemany(INSERT_SALE, rows)
    finally:
        connection.close()


def _rows(
    sales: int, day: date, days: int, first_id: int, rng: random.Random
) -> Iterator[tuple[Any, ...]]:
    last_midnight = datetime.combine(day, time())
    # Over several days, ids count up with the days, as a point of sale numbers its sales;
    # one day draws no day numbers, so that its sales stay those of earlier figures.
    days_back = [0] * sales
    if days > 1:
        days_back = sorted((rng.randrange(days) for _ in range(sales)), reverse=True)
    tenants = [tenant for tenant, _, _ in TENANTS]
    currencies = {tenant: currency for tenant, currency, _ in TENANTS}
    weights = [share for _, _, share in TENANTS]
    for sale_id in range(first_id, first_id + sales):
        tenant = rng.choices(tenants, weights)[0]
        item, category = rng.choice(_ITEMS)
        brand = rng.choice(_BRANDS)
        midnight = last_midnight - timedelta(days=days_back[sale_id - first_id])
        sold_at = midnight + timedelta(seconds=rng.randrange(86_400))
        list_cents = rng.randrange(500, 20_000)
        price_cents = list_cents * rng.choice((100, 100, 100, 90, 80, 50)) // 100
        yield (
            sale_id,
            tenant,
            rng.choice(("T1", "T2")),
            f"{tenant[:3].upper()}-{rng.randrange(1_000_000):06d}",
            f"{sold_at:%Y-%m-%d %H:%M:%S}",
            f"{price_cents // 100}.{price_cents % 100:02d}",
            f"{list_cents // 100}.{list_cents % 100:02d}",
            currencies[tenant],
            f"{brand} {rng.choice(_COLOURS)} {item}",
            brand,
            category,
            rng.choice(_CONDITIONS),
            None,
            rng.choice(("card", "card", "card", "cash")),
            f"{sold_at + timedelta(seconds=rng.randrange(90)):%Y-%m-%d %H:%M:%S}",
        )


def exporter_settings(
    database: Path, work: Path, photos: dict[str, Any] | None = None, **export: Any
) -> Settings:
    """Settings that export `database` into a local SQL catalog and file:// warehouse in `work`.

    `export` overrides keys of the `[export]` section (batch_size, ...), `photos` those of the
    `[photos]` section. The business day runs in UTC, as the stored timestamps do, so the
    window is exactly the generated day.
    """
    return load_config(
        export={"timezone": "UTC", **export},
        photos=photos or {},
        source={
            "type": "sql",
            "url": f"sqlite:///{database.resolve()}",
            "table": SALES_TABLE,
            "columns": SALE_COLUMNS,
            "timezone": "UTC",
        },
        table={
            "catalog": {
                "type": "sql",
                "uri": f"sqlite:///{(work / 'catalog.db').resolve()}",
                "warehouse": (work / "warehouse").resolve().as_uri(),
            }
        },
        progress={"type": "sqlite", "path": str((work / "progress.db").resolve())},
    )


def export_day(
    database: Path, work: Path, photos: dict[str, Any] | None = None, **export_options: Any
) -> dict[str, Any]:
    """Export the generated day with the exporter, as `export` runs it; what the run reported.

    `seconds` is the wall time of the `export` call, model loading and table opening included:
    what a nightly run pays.
    """
    configure_logging("WARNING")
    unmap_large_blocks()  # as the CLI does, which owns the process a nightly run is
    settings = exporter_settings(database, work, photos, **export_options)
    start = perf_counter()
    [record] = export(settings, [BUSINESS_DAY])
    seconds = perf_counter() - start
    if record.status is not RunStatus.SUCCEEDED:
        raise RuntimeError(f"the export ended {record.status}: {record.message}")
    return {
        "seconds": seconds,
        "written": record.counts.written,
        "unchanged": record.counts.unchanged,
        "embedded": record.counts.embedded,
        "failed": record.counts.failed,
        "batch_size": settings.export.batch_size,
        "commit_rows": settings.export.commit_rows,
    }


def count_rows(
    catalog: dict[str, str], catalog_name: str, identifier: tuple[str, str], key: tuple[str, str]
) -> tuple[int, int]:
    """(rows, distinct keys) of an Iceberg table: a merge that duplicated a key shows here."""
    table = load_catalog(catalog_name, **catalog).load_table(identifier)
    keys = table.scan(selected_fields=key).to_arrow()
    distinct = pa.TableGroupBy(keys, list(key)).aggregate([])
    return keys.num_rows, distinct.num_rows
