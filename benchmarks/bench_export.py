"""The exporter against its own limit, a straightforward script and Daft, on the same photos.

    .venv/bin/python benchmarks/bench_export.py --sales 2000

One run makes N sales in a SQLite store database, each with its own 800x800 JPEG, serves the
photos from another process, and measures side by side (this machine's speed drifts, so the
ratios are the figures to read):

1. the server: photos per second it delivers to the exporter's fetcher, which must be far
   above everything below, or the benchmark would measure the server;
2. the limit: decode + preprocess + model over the photos already in memory, the next batch
   decoded while the model runs on this one (and, for comparison, taking turns); plus how far
   JPEG draft-mode decoding moves the embeddings from a full-size decode;
3. a cold export of the day through the whole pipeline (source, lookups, downloads, model,
   commits), model loading included: goal at least 0.9 of the limit;
4. a warm re-run of the same day with nothing changed: goal at least 20x faster than cold;
   and the same N sales (with their own photos) over 31 days, backfilled cold (goal: at least
   0.9 of the one day's rate) and re-run warm (goal: at least 20x faster than its cold run);
5. a sequential script (for each sale: download, embed, collect; one append at the end);
6. Daft (`url.download`, the same model in a UDF, `write_iceberg`), when `daft` is installed
   (the `bench` extra).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image
from pyiceberg.catalog import load_catalog

from photo_workload import measure_server, serve_photos, write_photos, write_sales_with_photos
from sales_data import BUSINESS_DAY, exporter_settings
from smartgo_exporter import export
from smartgo_exporter.config import LocalEmbedderConfig
from smartgo_exporter.demo.store import SALES_TABLE
from smartgo_exporter.embedders.local import LocalEmbedder
from smartgo_exporter.embedders.preprocessing import decode_for_model
from smartgo_exporter.logs import configure_logging
from smartgo_exporter.run_records import RunStatus


def measure_limit(embedder: LocalEmbedder, photos: list[bytes]) -> dict[str, float]:
    """Images per second of decode + model: the embedder's workers side by side (one `embed`
    call over all photos), and a single worker taking decode and model in turns."""
    single = LocalEmbedder(LocalEmbedderConfig(threads=1))
    rates = {}
    for name, model in (("overlapped", embedder), ("in_turns", single)):
        model.embed(photos[:32])  # onnxruntime plans its kernels on the first run
        start = time.perf_counter()
        model.embed(photos)
        rates[name] = len(photos) / (time.perf_counter() - start)
    return rates


def draft_distance(embedder: LocalEmbedder, photos: list[bytes]) -> float:
    """The largest cosine distance between a photo's embedding with draft-mode decoding (what
    the exporter does) and with a full-size decode, over `photos`."""

    def vectors(draft: bool) -> np.ndarray:
        pixels = [
            decode_for_model(photo, LocalEmbedderConfig().fit, draft=draft) for photo in photos
        ]
        features, _ = embedder._run([p for p in pixels if isinstance(p, np.ndarray)])
        return features / np.linalg.norm(features, axis=1, keepdims=True)

    return float((1 - (vectors(True) * vectors(False)).sum(axis=1)).max())


def timed_export(settings: Any) -> dict[str, Any]:
    start = time.perf_counter()
    [record] = export(settings, [BUSINESS_DAY])
    seconds = time.perf_counter() - start
    if record.status is not RunStatus.SUCCEEDED:
        raise RuntimeError(f"the export ended {record.status}: {record.message}")
    return {"seconds": seconds, **{k: getattr(record.counts, k) for k in ("embedded", "reused")}}


BACKFILL_DAYS = 31


def timed_backfill(settings: Any) -> dict[str, Any]:
    """The 31 days that end with the benchmark's day, one `export` call as `backfill` makes."""
    days = [BUSINESS_DAY - timedelta(days=n) for n in reversed(range(BACKFILL_DAYS))]
    start = time.perf_counter()
    records = export(settings, days, trigger="backfill")
    seconds = time.perf_counter() - start
    if failed := [r for r in records if r.status is not RunStatus.SUCCEEDED]:
        raise RuntimeError(f"the backfill of {failed[0].business_date} ended {failed[0].status}")
    counts = {k: sum(getattr(r.counts, k) for r in records) for k in ("embedded", "reused")}
    return {"seconds": seconds, "days": len(records), **counts}


def sequential_script(database: Path, warehouse: Path) -> dict[str, Any]:
    """What one would write first: for each sale, download, embed; then append all at once."""
    start = time.perf_counter()
    embedder = LocalEmbedder(LocalEmbedderConfig())
    connection = sqlite3.connect(database)
    query = f"SELECT id, store_id, sold_at, price, currency, photo_url FROM {SALES_TABLE}"  # noqa: S608
    rows: list[dict[str, Any]] = []
    for sale_id, store, sold_at, price, currency, url in connection.execute(query):
        with urllib.request.urlopen(url) as response:
            photo = response.read()
        Image.open(io.BytesIO(photo)).verify()
        [vector] = embedder.embed([photo])
        rows.append(
            {
                "sale_id": str(sale_id),
                "tenant_id": store,
                "sold_at": sold_at,
                "sale_price": price,
                "currency": currency,
                "embedding": np.asarray(vector, dtype=np.float32).tolist(),
            }
        )
    connection.close()
    table = pa.Table.from_pylist(rows)
    warehouse.mkdir()
    catalog = load_catalog(
        "sequential",
        type="sql",
        uri=f"sqlite:///{warehouse}/catalog.db",
        warehouse=warehouse.as_uri(),
    )
    catalog.create_namespace_if_not_exists("bench")
    catalog.create_table("bench.sales", schema=table.schema).append(table)
    return {"seconds": time.perf_counter() - start, "embedded": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sales", type=int, default=2000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["sequential", "daft"])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    print(f"{args.sales} sales with distinct photos; {os.cpu_count()} cores; work in {work}")
    start = time.perf_counter()
    paths = write_photos(work / "photos", args.sales)
    print(f"photos made in {time.perf_counter() - start:.0f} s")
    photos = [path.read_bytes() for path in paths]
    size = np.mean([len(photo) for photo in photos]) / 1024
    print(f"photos: {len(photos)} JPEGs of 800x800, {size:.0f} KiB each")

    figures: dict[str, Any] = {"sales": args.sales, "date": datetime.now(UTC).isoformat()}
    with serve_photos(work / "photos") as base_url:
        database = work / "sales.db"
        write_sales_with_photos(database, args.sales, base_url)
        figures["server"] = measure_server([f"{base_url}/{p.name}" for p in paths])

        embedder = LocalEmbedder(LocalEmbedderConfig())
        figures["limit"] = measure_limit(embedder, photos)
        figures["draft_max_cosine_distance"] = draft_distance(embedder, photos[:64])
        del embedder

        (work / "exporter").mkdir()
        settings = exporter_settings(database, work / "exporter")
        settings.photos.allow_networks = ["127.0.0.0/8"]
        figures["cold"] = timed_export(settings)
        figures["warm"] = timed_export(settings)
        spread = work / "sales-over-31-days.db"
        write_sales_with_photos(spread, args.sales, base_url, days=BACKFILL_DAYS)
        (work / "backfill").mkdir()
        settings = exporter_settings(spread, work / "backfill")
        settings.photos.allow_networks = ["127.0.0.0/8"]
        figures["backfill_cold"] = timed_backfill(settings)
        figures["backfill_warm"] = timed_backfill(settings)
        if "sequential" not in args.skip:
            figures["sequential"] = sequential_script(database, work / "sequential")
        if "daft" not in args.skip:
            figures["daft"] = _daft(database, work / "daft")
    _print(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def _daft(database: Path, warehouse: Path) -> dict[str, Any] | None:
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Daft reports its use home unless told not to
    try:
        from daft_job import run_daft_job
    except ImportError as error:
        print(f"daft: not run ({error}); install the bench extra")
        return None
    result = run_daft_job(database, BUSINESS_DAY, warehouse)
    return {"seconds": result.seconds, "embedded": result.embedded}


def _print(figures: dict[str, Any]) -> None:
    limit = figures["limit"]["overlapped"]
    cold = figures["cold"]
    cold_rate = cold["embedded"] / cold["seconds"]
    print(f"server: {figures['server']:8.0f} photos/s delivered to the exporter's fetcher")
    print(f"limit (decode overlapped with model): {limit:6.1f} img/s")
    print(f"limit (one worker, decode then model): {figures['limit']['in_turns']:6.1f} img/s")
    distance = figures["draft_max_cosine_distance"]
    print(f"draft-mode decoding: max cosine distance to full-size decoding {distance:.4f}")
    print(f"{'run':<28}{'seconds':>9}{'img/s':>9}{'vs limit':>10}{'vs exporter':>13}")
    rows = [("exporter, cold", cold)]
    rows += [(f"backfill, {figures['backfill_cold']['days']} days, cold", figures["backfill_cold"])]
    rows += [
        (name, figures[key])
        for name, key in (("sequential script", "sequential"), ("daft", "daft"))
        if figures.get(key)
    ]
    for name, run in rows:
        rate = run["embedded"] / run["seconds"]
        seconds = run["seconds"]
        print(f"{name:<28}{seconds:9.1f}{rate:9.1f}{rate / limit:10.2f}{rate / cold_rate:13.2f}")
    warm = figures["warm"]
    print(
        f"{'exporter, warm re-run':<28}{warm['seconds']:9.1f}   (reused {warm['reused']},"
        f" embedded {warm['embedded']}): {cold['seconds'] / warm['seconds']:.1f}x faster than cold"
    )
    backfill, again = figures["backfill_cold"], figures["backfill_warm"]
    print(
        f"{'backfill, warm re-run':<28}{again['seconds']:9.1f}   (reused {again['reused']},"
        f" embedded {again['embedded']}): {backfill['seconds'] / again['seconds']:.1f}x faster"
        " than cold"
    )


if __name__ == "__main__":
    main()
