"""What exporting one day costs as the table grows: the same within 25% at 0, 1M and 10M rows.

Run with the dev environment: `.venv/bin/python benchmarks/bench_table_growth.py`. For each
size, a fresh local warehouse is given that many rows of history (a year of the demo's three
stores before the benchmark's day, their ids counting up with time as a point of sale's do,
appended in commits of `--commit-rows` as nightly runs would have, its lookup indexes built),
then one day of 10,000 new sales (`sales_data.py`, ids after the history's, no photos) is
exported into it twice in fresh processes (`isolated.py`): first, every sale new; then a
re-run, every sale unchanged.
The history is written by this process with pyiceberg directly, not by the exporter, so that
10M rows take minutes; its files are those of the same table, partitioned and sorted alike.

Then a window: `--window-sales` sales (1M) over the `--window-days` days (100) ending with the
benchmark's day, exported by the exporter into an empty table as one range (`export` of those
days), then the same range re-run, each in a fresh process: the first load against the warm
re-run that finds every sale unchanged. `--window-sales 0` leaves it out.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from isolated import log_tail, print_report, run_step
from sales_data import BUSINESS_DAY, TENANTS, export_day, exporter_settings, write_sales_database
from smartgo_exporter import export
from smartgo_exporter.allocator import unmap_large_blocks
from smartgo_exporter.logs import configure_logging
from smartgo_exporter.lookup import update_indexes
from smartgo_exporter.run_records import RunStatus
from smartgo_exporter.schema import ARROW_SCHEMA
from smartgo_exporter.sinks.iceberg import SalesTable

GIB = 2**30
HISTORY_DAYS = 365


def write_history(work: Path, database: Path, rows: int, commit_rows: int) -> float:
    """Append `rows` rows of history to the table `export_day` writes, and bring the lookup
    indexes up to date with it, as the nights that wrote it would have; the seconds it took.
    """
    start = time.perf_counter()
    settings = exporter_settings(database, work)
    table = SalesTable.open(settings.table, source="smartgo").table
    rng = np.random.default_rng(0)
    for first in range(0, rows, commit_rows):
        table.append(_history_rows(first, min(first + commit_rows, rows), rows, rng))
    update_indexes(settings)
    return time.perf_counter() - start


def _history_rows(first: int, end: int, total: int, rng: np.random.Generator) -> pa.Table:
    """Sales `first + 1` to `end` of `total`, sold evenly over the year before the day, sorted
    as the exporter sorts a commit (by tenant, then time)."""
    count = end - first
    ids = np.arange(first + 1, end + 1)
    last_midnight = datetime.combine(BUSINESS_DAY, datetime.min.time(), UTC)
    span_us = HISTORY_DAYS * 86_400 * 1_000_000
    since = (ids - 1) * span_us // max(total, 1)
    sold_at = pa.array(
        np.datetime64(last_midnight.replace(tzinfo=None) - timedelta(days=HISTORY_DAYS), "us")
        + since.astype("timedelta64[us]"),
        type=ARROW_SCHEMA.field("sold_at").type,
    )
    tenant_names = pa.array([tenant for tenant, _, _ in TENANTS])
    currencies = pa.array([currency for _, currency, _ in TENANTS])
    which = pa.array(rng.choice(len(TENANTS), count, p=[share for *_, share in TENANTS]))
    cents = rng.integers(500, 20_000, count)
    columns = {
        "sale_id": pc.cast(pa.array(ids), pa.string()),
        "tenant_id": pc.take(tenant_names, which),
        "product_id": pc.binary_join_element_wise("SKU-", pc.cast(pa.array(ids), pa.string()), ""),
        "sold_at": sold_at,
        "sale_price": pa.array(
            [Decimal(int(c)).scaleb(-2) for c in cents], type=ARROW_SCHEMA.field("sale_price").type
        ),
        "currency": pc.take(currencies, which),
        "title": pa.array(["Levi's navy jeans"] * count),
        "brand": pa.array(["Levi's"] * count),
        "category": pa.array(["Trousers"] * count),
        "condition": pa.array(["good"] * count),
        "embedding_status": pa.array(["no_image"] * count),
        "source": pa.array(["smartgo"] * count),
        "export_run_id": pa.array(["history"] * count),
        "exported_at": sold_at,
    }
    table = pa.table(
        {
            field.name: columns.get(field.name, pa.nulls(count, field.type)).cast(field.type)
            for field in ARROW_SCHEMA
        },
        schema=ARROW_SCHEMA,
    )
    return table.sort_by([("tenant_id", "ascending"), ("sold_at", "ascending")])


def measure(sizes: list[int], day_sales: int, commit_rows: int, timeout: float) -> int:
    print(
        f"{'table rows':>11} {'history s':>10} {'run':>7} {'seconds':>8} {'sales/s':>8}"
        f" {'vs empty':>9} {'peak RSS':>10}"
    )
    failed = False
    first_seconds: dict[str, float] = {}
    for size in sizes:
        root = Path(tempfile.mkdtemp(prefix="bench-growth-"))
        try:
            database, work = root / "day.db", root / "work"
            work.mkdir()
            write_sales_database(database, day_sales, first_id=size + 1)
            history = 0.0
            if size:
                # In a process of its own too: a child's peak RSS counts its parent's at the fork.
                arguments = [__file__, "--history", str(size), "--commit-rows", str(commit_rows)]
                arguments += ["--database", str(database), "--work", str(work)]
                written = run_step(arguments, log=root / "history.log", timeout_seconds=timeout)
                if written.report is None:
                    print(log_tail(root / "history.log"))
                    return 1
                history = written.report["seconds"]
            for run in ("first", "re-run"):
                log = root / f"{run}.log"
                arguments = [__file__, "--step", "--database", str(database), "--work", str(work)]
                result = run_step(arguments, log=log, timeout_seconds=timeout)
                rss = result.peak_rss
                if result.report is None:
                    print(f"{size:>11,} {history:10.1f} {run:>7} {result.failure}  {rss}")
                    if not result.timed_out:
                        print(log_tail(log))
                    failed = True
                    continue
                seconds = result.report["seconds"]
                first_seconds.setdefault(run, seconds)
                ratio = seconds / first_seconds[run]
                over = "  OVER 1 GiB" if result.peak_rss_bytes > GIB else ""
                print(
                    f"{size:>11,} {history:10.1f} {run:>7} {seconds:8.1f}"
                    f" {day_sales / seconds:8,.0f} {ratio:9.2f} {rss:>10}{over}"
                )
        finally:
            shutil.rmtree(root)
    return 1 if failed else 0


def measure_window(sales: int, days: int, timeout: float) -> int:
    """Export a window of `sales` over `days` days into an empty table, then re-run it."""
    print(f"\nwindow of {sales:,} sales over {days} days, into an empty table:")
    print(
        f"{'run':>7} {'seconds':>8} {'sales/s':>8} {'written':>10} {'unchanged':>10}"
        f" {'peak RSS':>10}"
    )
    root = Path(tempfile.mkdtemp(prefix="bench-window-"))
    try:
        database, work = root / "window.db", root / "work"
        work.mkdir()
        write_sales_database(database, sales, days=days)
        seconds: dict[str, float] = {}
        for run in ("first", "re-run"):
            log = root / f"window-{run}.log"
            arguments = [__file__, "--window-step", str(days)]
            arguments += ["--database", str(database), "--work", str(work)]
            result = run_step(arguments, log=log, timeout_seconds=timeout)
            if result.report is None:
                print(f"{run:>7} {result.failure}  {result.peak_rss}")
                if not result.timed_out:
                    print(log_tail(log))
                return 1
            report = result.report
            seconds[run] = report["seconds"]
            over = "  OVER 1 GiB" if result.peak_rss_bytes > GIB else ""
            print(
                f"{run:>7} {report['seconds']:8.1f} {sales / report['seconds']:8,.0f}"
                f" {report['written']:>10,} {report['unchanged']:>10,} {result.peak_rss:>10}{over}"
            )
        print(
            f"the re-run is {seconds['first'] / seconds['re-run']:.1f}x faster than the first load"
        )
    finally:
        shutil.rmtree(root)
    return 0


def export_window(database: Path, work: Path, days: int) -> dict[str, Any]:
    """Export the `days` days ending with the benchmark's day as one range, as `export` runs a
    backfill; the wall time and what the days' runs counted together."""
    configure_logging("WARNING")
    unmap_large_blocks()
    settings = exporter_settings(database, work)
    window = [BUSINESS_DAY - timedelta(days=back) for back in reversed(range(days))]
    start = time.perf_counter()
    records = export(settings, window)
    seconds = time.perf_counter() - start
    failed = [record for record in records if record.status is not RunStatus.SUCCEEDED]
    if failed:
        raise RuntimeError(f"{len(failed)} days did not succeed: {failed[0].message}")
    return {
        "seconds": seconds,
        "written": sum(record.counts.written for record in records),
        "unchanged": sum(record.counts.unchanged for record in records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, nargs="*", default=[0, 1_000_000, 10_000_000], help="table sizes"
    )
    parser.add_argument("--day-sales", type=int, default=10_000, help="sales of the day exported")
    parser.add_argument(
        "--commit-rows", type=int, default=100_000, help="rows per commit of the history"
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per export")
    parser.add_argument(
        "--window-sales", type=int, default=1_000_000, help="sales of the window re-run, 0: none"
    )
    parser.add_argument("--window-days", type=int, default=100, help="days of the window")
    parser.add_argument("--window-step", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--step", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--history", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--database", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print_report(export_day(args.database, args.work))
        return
    if args.window_step is not None:
        print_report(export_window(args.database, args.work, args.window_step))
        return
    if args.history is not None:
        configure_logging("WARNING")
        seconds = write_history(args.work, args.database, args.history, args.commit_rows)
        print_report({"seconds": seconds})
        return
    failed = measure(args.rows, args.day_sales, args.commit_rows, args.timeout) if args.rows else 0
    if args.window_sales:
        failed |= measure_window(args.window_sales, args.window_days, args.timeout)
    raise SystemExit(failed)


if __name__ == "__main__":
    main()
