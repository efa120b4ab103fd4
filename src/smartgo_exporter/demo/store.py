"""The demo store's SQLite database: a SmartGo point-of-sale database, written and read back.

It is the POS as a user would meet it: column names are the POS's own (so the config's column
mapping is exercised) and money is decimal text. Its rows are the plan's (`demo.plan`), so the
same seed gives the same rows, and a demo run twice is the same store twice.

Apart from the plan because this is the POS's side of the demo: benchmarks build stores of
their own on its tables (SCHEMA, INSERT_SALE), with sales of their own.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from smartgo_exporter.demo.plan import DEFAULT_SALES, DEFAULT_SEED, DemoCatalog, DemoSale, plan_demo

SALES_TABLE = "sales"
SALE_COLUMNS = {
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
"""Sale field -> column of the demo's `sales` table: what the written config maps."""


SCHEMA = """
CREATE TABLE stores (
    store_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    city TEXT NOT NULL,
    currency TEXT NOT NULL,
    timezone TEXT NOT NULL
);
CREATE TABLE sales (
    id INTEGER PRIMARY KEY,
    store_id TEXT NOT NULL REFERENCES stores (store_id),
    till TEXT NOT NULL,
    sku TEXT NOT NULL,
    sold_at TEXT NOT NULL,          -- 'YYYY-MM-DD HH:MM:SS', naive UTC
    price TEXT,                     -- decimal text such as '24.50': money is never a float
    list_price TEXT,
    currency TEXT NOT NULL,
    title TEXT,
    brand TEXT,
    category TEXT,
    item_condition TEXT,
    photo_url TEXT,
    payment_method TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX sales_by_sold_at ON sales (sold_at);
CREATE INDEX sales_by_store_sku ON sales (store_id, sku);
CREATE TABLE demo_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
"""The demo POS database's tables: stores, sales (with the POS's own column names) and demo_meta;
benchmarks build their stores from it too."""

INSERT_SALE = """
INSERT INTO sales (
    id, store_id, till, sku, sold_at, price, list_price, currency, title, brand, category,
    item_condition, photo_url, payment_method, updated_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


@dataclasses.dataclass(frozen=True, slots=True)
class DemoMeta:
    """Which days a demo database covers, and how it was made, read back without rebuilding."""

    first_day: date
    days: int
    seed: int
    sales: int
    photo_base_url: str

    @property
    def last_day(self) -> date:
        return self.first_day + timedelta(days=self.days - 1)


def build_sales_database(
    path: Path,
    *,
    photo_base_url: str,
    first_day: date,
    days: int = 30,
    sales: int = DEFAULT_SALES,
    seed: int = DEFAULT_SEED,
) -> DemoCatalog:
    """Write the demo store's SmartGo database at `path`, replacing any database there.

    The file appears complete or not at all (it is built beside `path` and renamed), so an
    interrupted build never leaves a half-filled store that a later run would mistake for the
    demo. Returns the catalog, whose products `render_photos` draws.
    """
    catalog = plan_demo(first_day=first_day, days=days, sales=sales, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(f".{path.name}.building")
    building.unlink(missing_ok=True)
    connection = sqlite3.connect(building)
    try:
        with connection:
            connection.executescript(SCHEMA)
            connection.executemany(
                "INSERT INTO stores VALUES (?, ?, ?, ?, ?)",
                [(s.store_id, s.name, s.city, s.currency, s.timezone) for s in catalog.stores],
            )
            connection.executemany(
                INSERT_SALE, [_sale_row(sale, photo_base_url) for sale in catalog.sales]
            )
            meta = {
                "first_day": first_day.isoformat(),
                "days": str(days),
                "seed": str(seed),
                "sales": str(sales),
                "photo_base_url": photo_base_url,
            }
            connection.executemany("INSERT INTO demo_meta VALUES (?, ?)", sorted(meta.items()))
    finally:
        connection.close()
    os.replace(building, path)
    return catalog


def _sale_row(sale: DemoSale, photo_base_url: str) -> tuple[Any, ...]:
    product = sale.product
    return (
        sale.sale_id,
        product.store_id,
        sale.till,
        product.sku,
        f"{sale.sold_at:%Y-%m-%d %H:%M:%S}",
        None if sale.price is None else f"{sale.price:.2f}",
        f"{product.list_price:.2f}",
        sale.currency,
        product.title,
        product.brand,
        product.category,
        product.condition,
        product.photo_url(photo_base_url),
        sale.payment_method,
        f"{sale.updated_at:%Y-%m-%d %H:%M:%S}",
    )


def read_demo_meta(path: Path) -> DemoMeta | None:
    """What a demo database covers, or None when `path` is not a complete demo database."""
    if not path.is_file():
        return None
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            meta = dict(connection.execute("SELECT key, value FROM demo_meta").fetchall())
        finally:
            connection.close()
        return DemoMeta(
            first_day=date.fromisoformat(meta["first_day"]),
            days=int(meta["days"]),
            seed=int(meta["seed"]),
            sales=int(meta["sales"]),
            photo_base_url=meta["photo_base_url"],
        )
    except (sqlite3.Error, KeyError, ValueError):
        return None
