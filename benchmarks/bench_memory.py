"""Peak memory of an export: flat as the window grows, and under 1 GiB whatever the photos.

Run with the dev environment: `.venv/bin/python benchmarks/bench_memory.py`. Each export runs
in a fresh process, so that each peak RSS is that export's alone (see `isolated.py`); the
database and the photos are made by this process, not the measured one. Two workloads:

- by default, windows of 10k, 100k and 1M sales without photos (`sales_data.py`): the table's
  side, which must not grow with the window;
- `--camera-photos N`: one day of N sales, each with its own camera-size photo (4032x3024, a
  JPEG of about 9.5 MB, as shops upload them unresized; `photo_workload.py`) fetched from a
  local server and embedded by the local model, once for each `--part-bytes` given: the
  default `photos.part_bytes`, and whole batches at once (how the exporter held photos before
  the setting).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from isolated import log_tail, print_report, run_step
from photo_workload import serve_photos, write_camera_photos, write_sales_with_photos
from sales_data import export_day, write_sales_database
from smartgo_exporter.config import PhotoConfig

GIB = 2**30
WHOLE_BATCHES = sys.maxsize
"""`--part-bytes` for no parts: a batch's photos all reach the model at once."""


def measure(steps: list[Step], root: Path, timeout: float) -> int:
    """Run each export in a fresh process; print a line each; 1 if any failed."""
    print(f"{'export':>24} {'seconds':>8} {'sales/s':>8} {'peak RSS':>10}  settings")
    failed = False
    for step in steps:
        work = root / "work"
        work.mkdir()
        log = root / "export.log"
        arguments = [__file__, "--step", "--database", str(step.database), "--work", str(work)]
        result = run_step([*arguments, *step.options], log=log, timeout_seconds=timeout)
        rss = result.peak_rss
        if result.report is None:
            why = result.failure
            print(f"{step.label:>24} {result.elapsed_seconds:8.1f} {'-':>8} {rss:>10}  {why}")
            if not result.timed_out:
                print(log_tail(log))
            failed = True
        else:
            report = result.report
            sales = report["written"] + report["unchanged"]
            over = "  OVER 1 GiB" if result.peak_rss_bytes > GIB else ""
            print(
                f"{step.label:>24} {report['seconds']:8.1f} {sales / report['seconds']:8,.0f}"
                f" {rss:>10}  {_settings(report)}{over}"
            )
        shutil.rmtree(work)
    return 1 if failed else 0


@dataclasses.dataclass(frozen=True)
class Step:
    """One export to measure: what it is called, its database, and the step's own options."""

    label: str
    database: Path
    options: list[str]


def _settings(report: dict[str, Any]) -> str:
    text = f"batch_size {report['batch_size']:,}, commit_rows {report['commit_rows']:,}"
    if "part_bytes" in report:
        parts = report["part_bytes"]
        text += ", whole batches" if parts == WHOLE_BATCHES else f", part_bytes {parts:,}"
        text += f"; embedded {report['embedded']:,}, failed {report['failed']:,}"
    return text


def camera_step(
    database: Path, work: Path, photos_url: str, part_bytes: int, **export_options: Any
) -> dict[str, Any]:
    """One export of the camera-photo day, with the photo server allowed by host and port."""
    photos = {"allow_hosts": [photos_url.split("/")[2]], "part_bytes": part_bytes}
    return export_day(database, work, photos, **export_options) | {"part_bytes": part_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sales", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="window sizes"
    )
    parser.add_argument(
        "--camera-photos", type=int, metavar="N", help="instead: N sales with camera-size photos"
    )
    parser.add_argument(
        "--part-bytes",
        type=int,
        nargs="+",
        default=[PhotoConfig().part_bytes, WHOLE_BATCHES],
        help="photos.part_bytes of each camera-photo export",
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
    parser.add_argument("--photos-url", help=argparse.SUPPRESS)
    parser.add_argument("--step-part-bytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    options = {k: v for k in ("batch_size", "commit_rows") if (v := getattr(args, k)) is not None}
    if args.step:
        if args.photos_url is None:
            print_report(export_day(args.database, args.work, **options))
        else:
            parts = args.step_part_bytes
            print_report(camera_step(args.database, args.work, args.photos_url, parts, **options))
        return
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    root = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        if args.camera_photos is None:
            steps = []
            for count in args.sales:
                database = root / f"sales-{count}.db"
                write_sales_database(database, count)
                steps.append(Step(f"{count:,} sales", database, forwarded))
            raise SystemExit(measure(steps, root, args.timeout))
        photos = write_camera_photos(root / "photos")
        size = sum(path.stat().st_size for path in photos) / len(photos) / 1e6
        print(f"{args.camera_photos:,} sales, each with its own 4032x3024 JPEG of {size:.1f} MB")
        with serve_photos(root / "photos") as photos_url:
            database = root / "sales.db"
            write_sales_with_photos(database, args.camera_photos, photos_url)
            steps = [
                Step(
                    f"{args.camera_photos:,} camera photos",
                    database,
                    [*forwarded, f"--photos-url={photos_url}", f"--step-part-bytes={part_bytes}"],
                )
                for part_bytes in args.part_bytes
            ]
            raise SystemExit(measure(steps, root, args.timeout))
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
