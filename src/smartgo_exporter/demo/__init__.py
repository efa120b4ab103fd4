"""The embedded demo: a SmartGo store's sales database, its product photos and a photo server.

Everything a user needs to see the exporter work on one machine, with no cloud: a SQLite
point-of-sale database whose column names are the POS's own (so the config's column mapping is
exercised), real photo files in four formats drawn with Pillow (so the embedder sees pictures
where kind and colour decide what looks alike), and a local HTTP server for them (so photos
travel the same fetch path as in production). Some input is bad on purpose, because a demo of
an exporter should show how it reports broken links, missing photos and rows it cannot use.

The blocks are deterministic for a seed: the same seed gives the same rows and the same photo
bytes, so a demo run twice is the same store twice.

    paths = DemoPaths(Path("smartgo-demo"))
    catalog = build_sales_database(
        paths.sales_db, photo_base_url=photo_base_url(), first_day=date(2026, 10, 1)
    )
    render_photos(paths.photos, catalog.products, seed=catalog.seed)
    write_demo_config(paths)
    with serve_photos(paths.photos) as base_url:
        ...  # smartgo-exporter run --config smartgo-demo/smartgo-exporter.toml
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from smartgo_exporter.config import load_config
from smartgo_exporter.demo.layout import DemoPaths, write_demo_config
from smartgo_exporter.demo.photos import render_photos
from smartgo_exporter.demo.server import (
    DEFAULT_PHOTO_PORT,
    DemoError,
    photo_base_url,
    serve_photos,
)
from smartgo_exporter.demo.store import (
    DEFAULT_SALES,
    SALE_COLUMNS,
    STORES,
    DemoCatalog,
    DemoProduct,
    DemoSummary,
    PhotoState,
    build_sales_database,
    plan_demo,
    read_demo_meta,
)
from smartgo_exporter.pipeline import BatchDone, export
from smartgo_exporter.records import RunRecord

__all__ = [
    "SALE_COLUMNS",
    "STORES",
    "DemoCatalog",
    "DemoError",
    "DemoOutcome",
    "DemoPaths",
    "DemoProduct",
    "PhotoState",
    "build_sales_database",
    "photo_base_url",
    "read_demo_meta",
    "render_photos",
    "run_demo",
    "serve_photos",
    "write_demo_config",
]


@dataclasses.dataclass(frozen=True, slots=True)
class DemoOutcome:
    paths: DemoPaths
    summary: DemoSummary
    records: list[RunRecord]


def run_demo(
    root: Path,
    *,
    fresh: bool = False,
    port: int = DEFAULT_PHOTO_PORT,
    sales: int = DEFAULT_SALES,
    on_batch: Callable[[BatchDone], None] | None = None,
) -> DemoOutcome:
    """Build the demo store under `root` (once), serve its photos and export every one of its days.

    The store is built on the first run and kept: its days are fixed then (the 30 days before
    that first run), so a second run exports exactly the same sales and, with nothing changed,
    writes nothing. `fresh` throws away the store, the warehouse and the run history and starts
    again. A different `port` changes every photo URL, so it rebuilds the database (same seed,
    same sales) and the photos are fetched and embedded again.
    """
    paths = DemoPaths(root)
    base_url = photo_base_url(port=port)
    if fresh:
        for folder in (paths.warehouse, paths.photos):
            shutil.rmtree(folder, ignore_errors=True)
        for file in (paths.sales_db, paths.progress_db):
            file.unlink(missing_ok=True)
    meta = read_demo_meta(paths.sales_db)
    if meta is None or meta.photo_base_url != base_url:
        first_day = meta.first_day if meta else datetime.now(UTC).date() - timedelta(days=30)
        catalog = build_sales_database(
            paths.sales_db, photo_base_url=base_url, first_day=first_day, sales=sales
        )
    else:
        catalog = plan_demo(
            first_day=meta.first_day, days=meta.days, sales=meta.sales, seed=meta.seed
        )
    missing = [
        p for p in catalog.products if p.photo_name and not (paths.photos / p.photo_name).exists()
    ]
    render_photos(paths.photos, missing, seed=catalog.seed)
    settings = load_config(write_demo_config(paths))
    day_list = [catalog.first_day + timedelta(days=n) for n in range(catalog.days)]
    with serve_photos(paths.photos, port=port):
        records = export(settings, day_list, trigger="demo", on_batch=on_batch)
    return DemoOutcome(paths, catalog.summary, records)
