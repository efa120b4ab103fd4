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
from typing import TYPE_CHECKING

from smartgo_exporter.config_loader import load_config
from smartgo_exporter.demo.layout import DemoPaths, write_demo_config
from smartgo_exporter.demo.photos import render_photos
from smartgo_exporter.demo.plan import (
    DEFAULT_SALES,
    DemoCatalog,
    DemoProduct,
    DemoSummary,
    PhotoState,
    plan_demo,
)
from smartgo_exporter.demo.server import (
    DEFAULT_PHOTO_PORT,
    DemoError,
    photo_base_url,
    serve_photos,
)
from smartgo_exporter.demo.shops import STORES
from smartgo_exporter.demo.store import SALE_COLUMNS, build_sales_database, read_demo_meta
from smartgo_exporter.pipeline import export
from smartgo_exporter.run_records import RunRecord
from smartgo_exporter.runs import BatchDone

if TYPE_CHECKING:
    from smartgo_exporter.demo.aws_local import AwsLocalReport

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
    aws_local: AwsLocalReport | None = None
    """What went through the local AWS servers, for `run_demo(aws_local=True)`."""


def run_demo(
    root: Path,
    *,
    fresh: bool = False,
    port: int = DEFAULT_PHOTO_PORT,
    sales: int = DEFAULT_SALES,
    days: int = 30,
    on_batch: Callable[[BatchDone], None] | None = None,
    aws_local: bool = False,
) -> DemoOutcome:
    """Build the demo store under `root` (once), serve its photos and export every one of its days.

    The store is built on the first run and kept: its days are fixed then (the `days` days
    before that first run), so a second run exports exactly the same sales and, with nothing
    changed, writes nothing; `sales` and `days` only matter when the store is built. `fresh`
    throws away the store, the warehouses and the run history and starts again. A different
    `port` changes every photo URL, so it rebuilds the database (same seed, same sales) and the
    photos are fetched and embedded again.

    `aws_local` exports through local stand-ins for SSM, Bedrock, S3 Tables and DynamoDB,
    started for the export and stopped after it (see `demo.aws_local`), instead of into the
    local SQLite catalog and progress store.
    """
    if aws_local:
        # Imported here: it needs the `aws-local` extra, and says so when it is missing.
        from smartgo_exporter.demo.aws_local import export_on_local_aws, find_weed

        find_weed()  # before any work, so a missing SeaweedFS is the first thing said
    paths = DemoPaths(root)
    base_url = photo_base_url(port=port)
    if fresh:
        for folder in (paths.warehouse, paths.photos, paths.aws_local):
            shutil.rmtree(folder, ignore_errors=True)
        for file in (paths.sales_db, paths.progress_db):
            file.unlink(missing_ok=True)
    meta = read_demo_meta(paths.sales_db)
    if meta is None or meta.photo_base_url != base_url:
        if meta is None:
            first_day, days = datetime.now(UTC).date() - timedelta(days=days), days
        else:
            first_day, days = meta.first_day, meta.days
        catalog = build_sales_database(
            paths.sales_db, photo_base_url=base_url, first_day=first_day, days=days, sales=sales
        )
    else:
        catalog = plan_demo(
            first_day=meta.first_day, days=meta.days, sales=meta.sales, seed=meta.seed
        )
    missing = [
        p for p in catalog.products if p.photo_name and not (paths.photos / p.photo_name).exists()
    ]
    render_photos(paths.photos, missing, seed=catalog.seed)
    day_list = [catalog.first_day + timedelta(days=n) for n in range(catalog.days)]
    report: AwsLocalReport | None = None
    if aws_local:
        with serve_photos(paths.photos, port=port):
            records, report = export_on_local_aws(paths, day_list, on_batch=on_batch)
    else:
        settings = load_config(write_demo_config(paths))
        with serve_photos(paths.photos, port=port):
            records = export(settings, day_list, trigger="demo", on_batch=on_batch)
    return DemoOutcome(paths, catalog.summary, records, report)
