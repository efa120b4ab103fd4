"""SQL to Iceberg alone (sales without photos): the exporter against dlt, in rows per second.

Run with the dev environment and the bench extra: `.venv/bin/python
benchmarks/bench_sql_to_iceberg.py --sales 1000000`. One business day of sales (see
`sales_data.py`) is written to a SQLite database, then loaded into Iceberg twice by each side:

- the exporter: `export(settings, [day])` into a SQL catalog (SQLite) and a file:// warehouse;
- dlt: its `sql_database` source into the `filesystem` destination with `table_format="iceberg"`,
  the same kind of catalog and warehouse, merged with the `upsert` strategy (the one dlt has for
  Iceberg) on the exporter's key, (tenant_id, sale_id), i.e. the POS columns (store_id, id).

The second load is a re-run over unchanged data: the exporter should find every row unchanged
and write nothing; dlt merges every row again. Both tables must end with exactly one row per
sale. For a like-for-like load, both sides partition by tenant and month of sold_at, and dlt is
told the types the exporter derives (timestamps, decimal(12,2) money) instead of landing the
SQLite text as strings. The database holds the day alone, so dlt reading the whole table reads
exactly the exporter's window. dlt's `pyarrow` backend is the default: it extracted and
normalized 100,000 of these rows about five times faster than the `sqlalchemy` one (the merge
dominates dlt's time either way).

Each load runs in a fresh process (see `isolated.py`), which gives its peak RSS too; a load
still running after `--timeout` seconds is killed, and the rows it had committed by then are
reported instead (dlt's merge re-scans the table for every 1,000 rows, so it slows down as the
table grows and a million rows take it far longer than the exporter).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from decimal import Decimal
from pathlib import Path
from time import perf_counter
from typing import Any

import dlt
import sqlalchemy as sa
from dlt.destinations.adapters import iceberg_adapter, iceberg_partition
from dlt.sources.sql_database import TableBackend, sql_database

from isolated import StepResult, log_tail, print_report, run_step
from sales_data import count_rows, export_day, exporter_settings, write_sales_database
from smartgo_exporter.demo.store import SALE_COLUMNS, SALES_TABLE

DLT_CATALOG_NAME = "bench"
DLT_DATASET = "pricing_intelligence"
DLT_KEY = (SALE_COLUMNS["tenant_id"], SALE_COLUMNS["sale_id"])
"""The exporter's upsert key, (tenant_id, sale_id), as the POS names its columns."""
SYSTEMS = ("exporter", "dlt")
RUNS = ("first", "re-run")


class _DecimalText(sa.Numeric):  # type: ignore[type-arg]
    """NUMERIC read from SQLite text as an exact Decimal, the way the exporter reads money.

    SQLAlchemy's own Numeric expects a float from SQLite and fails on decimal text.
    """

    cache_ok = True

    def result_processor(self, dialect: sa.Dialect, coltype: object) -> Any:
        return lambda value: None if value is None else Decimal(value)


def _typed_like_the_exporter(table: sa.Table) -> sa.Table:
    """Give dlt the column types the exporter derives from the POS's text columns."""
    for field in ("sold_at", "source_updated_at"):
        table.c[SALE_COLUMNS[field]].type = sa.DateTime()
    for field in ("sale_price", "list_price"):
        table.c[SALE_COLUMNS[field]].type = _DecimalText(12, 2)
    return table


def dlt_catalog(work: Path) -> dict[str, str]:
    return {
        "type": "sql",
        "uri": f"sqlite:///{(work / 'catalog.db').resolve()}",
        "warehouse": (work / "bucket").resolve().as_uri(),
    }


def load_with_dlt(database: Path, work: Path, backend: TableBackend) -> dict[str, Any]:
    """Load the generated day with dlt (merge, upsert strategy); `seconds` is `pipeline.run`."""
    # dlt resolves its configuration from the environment when the pipeline runs.
    os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    os.environ["ICEBERG_CATALOG__ICEBERG_CATALOG_NAME"] = DLT_CATALOG_NAME
    os.environ["ICEBERG_CATALOG__ICEBERG_CATALOG_TYPE"] = "sql"
    os.environ["ICEBERG_CATALOG__ICEBERG_CATALOG_CONFIG"] = json.dumps(dlt_catalog(work))
    source = sql_database(
        f"sqlite:///{database.resolve()}",
        table_names=[SALES_TABLE],
        backend=backend,
        reflection_level="full_with_precision",
        table_adapter_callback=_typed_like_the_exporter,
    )
    sales = source.resources[SALES_TABLE]
    sales.apply_hints(
        primary_key=list(DLT_KEY),
        write_disposition={"disposition": "merge", "strategy": "upsert"},
        table_format="iceberg",
    )
    iceberg_adapter(sales, partition=[DLT_KEY[0], iceberg_partition.month(SALE_COLUMNS["sold_at"])])
    pipeline = dlt.pipeline(
        pipeline_name="bench_sql_to_iceberg",
        pipelines_dir=str(work / "pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=(work / "bucket").resolve().as_uri()),
        dataset_name=DLT_DATASET,
    )
    start = perf_counter()
    pipeline.run(source)
    return {"seconds": perf_counter() - start}


def _table_rows(system: str, database: Path, work: Path) -> tuple[int, int] | None:
    """(rows, distinct keys) in the system's table, or None when it made no table."""
    if system == "exporter":
        settings = exporter_settings(database, work).table
        catalog, name = settings.catalog, settings.catalog_name
        identifier, key = (settings.namespace, settings.name), ("tenant_id", "sale_id")
    else:
        catalog, name = dlt_catalog(work), DLT_CATALOG_NAME
        identifier, key = (DLT_DATASET, SALES_TABLE), DLT_KEY
    if not (work / "catalog.db").exists():
        return None
    try:
        return count_rows(catalog, name, identifier, key)
    except Exception:  # no table was committed before the step failed
        return None


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"


def run_loads(
    args: argparse.Namespace, database: Path, root: Path, export_options: list[str]
) -> dict[tuple[str, str], StepResult]:
    """Each system's first load and re-run, each in a fresh process; a failed first load ends
    that system's turn."""
    results: dict[tuple[str, str], StepResult] = {}
    for system in SYSTEMS:
        work = root / system
        work.mkdir()
        options = export_options if system == "exporter" else [f"--dlt-backend={args.dlt_backend}"]
        for run in RUNS:
            log = root / f"{system}-{run}.log"
            step = ["--step", system, "--database", str(database), "--work", str(work)]
            result = run_step([__file__, *step, *options], log=log, timeout_seconds=args.timeout)
            results[system, run] = result
            if result.report is None:
                if not result.timed_out:
                    print(f"{system} {run} failed (exit {result.returncode}):\n{log_tail(log)}")
                break
    return results


def print_loads(results: dict[tuple[str, str], StepResult], sales: int) -> None:
    print(f"{'system':<9} {'run':<7} {'seconds':>9} {'rows/s':>9} {'peak RSS':>10}  note")
    for (system, run), result in results.items():
        report = result.report
        rss = _mib(result.peak_rss_bytes)
        if report is None:
            why = result.failure
            print(f"{system:<9} {run:<7} {result.elapsed_seconds:9.1f} {'-':>9} {rss:>10}  {why}")
            continue
        note = ""
        if system == "exporter":
            note = (
                f"written {report['written']:,}, unchanged {report['unchanged']:,}"
                f" (batch_size {report['batch_size']:,}, commit_rows {report['commit_rows']:,})"
            )
        seconds = report["seconds"]
        print(f"{system:<9} {run:<7} {seconds:9.1f} {sales / seconds:9,.0f} {rss:>10}  {note}")
    for run in RUNS:
        ours, theirs = results.get(("exporter", run)), results.get(("dlt", run))
        if ours and theirs and ours.report and theirs.report:
            ratio = theirs.report["seconds"] / ours.report["seconds"]
            print(f"exporter / dlt, {run}: {ratio:.2f}x the rows per second")


def check_tables(
    results: dict[tuple[str, str], StepResult], sales: int, database: Path, root: Path
) -> bool:
    """Print each table's rows and distinct keys; False when a finished system's table does
    not hold exactly one row per sale."""
    right = True
    for system in SYSTEMS:
        finished = all((r := results.get((system, run))) and r.report for run in RUNS)
        counted = _table_rows(system, database, root / system)
        if counted is None:
            print(f"{system} table: none")
            right = right and not finished
            continue
        rows, keys = counted
        if finished:
            verdict = "ok" if rows == keys == sales else f"WRONG, expected {sales:,}"
            right = right and verdict == "ok"
        else:
            elapsed = results[system, "first"].elapsed_seconds
            verdict = (
                f"committed by a first load stopped at {elapsed:,.0f} s, {rows / elapsed:,.0f}"
                " rows/s: an upper bound for the whole load, as each merge is slower than the last"
            )
        print(f"{system} table: {rows:,} rows, {keys:,} distinct keys: {verdict}")
    return right


def compare(args: argparse.Namespace, root: Path, export_options: list[str]) -> int:
    database = root / "sales.db"
    start = perf_counter()
    write_sales_database(database, args.sales)
    print(
        f"sales: {args.sales:,} in one day, 3 tenants, no photos (generated in"
        f" {perf_counter() - start:.1f} s); dlt backend: {args.dlt_backend}\n"
    )
    results = run_loads(args, database, root, export_options)
    print_loads(results, args.sales)
    print()
    return 0 if check_tables(results, args.sales, database, root) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sales", type=int, default=1_000_000)
    parser.add_argument("--dlt-backend", choices=["pyarrow", "sqlalchemy"], default="pyarrow")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per load")
    parser.add_argument("--batch-size", type=int, help="export.batch_size (default: the config's)")
    parser.add_argument(
        "--commit-rows", type=int, help="export.commit_rows (default: the config's)"
    )
    parser.add_argument("--keep", type=Path, help="work in this new folder and keep it")
    # One load in this (fresh) process: how `compare` runs each load.
    parser.add_argument("--step", choices=["exporter", "dlt"], help=argparse.SUPPRESS)
    parser.add_argument("--database", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    options = {k: v for k in ("batch_size", "commit_rows") if (v := getattr(args, k)) is not None}
    if args.step == "exporter":
        print_report(export_day(args.database, args.work, **options))
        return
    if args.step == "dlt":
        print_report(load_with_dlt(args.database, args.work, args.dlt_backend))
        return
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        raise SystemExit(compare(args, args.keep, forwarded))
    root = Path(tempfile.mkdtemp(prefix="bench-sql-to-iceberg-"))
    try:
        raise SystemExit(compare(args, root, forwarded))
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
