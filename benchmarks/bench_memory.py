"""Peak memory of an export as the window grows: it should stay flat, under 1 GiB at 1M sales.

Run with the dev environment: `.venv/bin/python benchmarks/bench_memory.py`. Each window is one
business day of sales without photos (see `sales_data.py`), exported into a fresh local
warehouse by `export` in a fresh process, so that each peak RSS is that export's alone (see
`isolated.py`). The database is written by this process, not the measured one.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from isolated import log_tail, print_report, run_step
from sales_data import export_day, write_sales_database

GIB = 2**30


def measure(sales: list[int], root: Path, export_options: list[str], timeout: float) -> int:
    print(f"{'sales':>9} {'seconds':>8} {'rows/s':>8} {'peak RSS':>10}  settings")
    failed = False
    for count in sales:
        folder = root / str(count)
        folder.mkdir()
        database = folder / "sales.db"
        write_sales_database(database, count)
        work = folder / "work"
        work.mkdir()
        log = folder / "export.log"
        arguments = [__file__, "--step", "--database", str(database), "--work", str(work)]
        result = run_step([*arguments, *export_options], log=log, timeout_seconds=timeout)
        rss = f"{result.peak_rss_bytes / 2**20:,.0f} MiB"
        if result.report is None:
            why = "timed out" if result.timed_out else f"failed, exit {result.returncode}"
            print(f"{count:>9,} {result.elapsed_seconds:8.1f} {'-':>8} {rss:>10}  {why}")
            if not result.timed_out:
                print(log_tail(log))
            failed = True
            continue
        seconds = result.report["seconds"]
        settings = (
            f"batch_size {result.report['batch_size']:,},"
            f" commit_rows {result.report['commit_rows']:,}"
        )
        over = "  OVER 1 GiB" if result.peak_rss_bytes > GIB else ""
        print(f"{count:>9,} {seconds:8.1f} {count / seconds:8,.0f} {rss:>10}  {settings}{over}")
        shutil.rmtree(folder)
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sales", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="window sizes"
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per export")
    parser.add_argument("--batch-size", type=int, help="export.batch_size (default: the config's)")
    parser.add_argument(
        "--commit-rows", type=int, help="export.commit_rows (default: the config's)"
    )
    # One export in this (fresh) process: how `measure` runs each window.
    parser.add_argument("--step", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--database", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    options = {k: v for k in ("batch_size", "commit_rows") if (v := getattr(args, k)) is not None}
    if args.step:
        print_report(export_day(args.database, args.work, **options))
        return
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    root = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        raise SystemExit(measure(args.sales, root, forwarded, args.timeout))
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
