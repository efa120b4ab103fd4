"""How many commits a minute one committer gets from a catalog: the ceiling of a Ray backfill.

Run with the dev environment: `.venv/bin/python benchmarks/bench_commit_rate.py`. The Ray
runner's driver is the table's only committer, so a cluster of any size writes at most as many
snapshots a minute as the catalog takes from one process. For each catalog (the local SQL
catalog with a file:// warehouse, and SeaweedFS's Iceberg REST catalog, signed as S3 Tables is,
with its S3 for the files), a new table gets `--commits` commits of `--rows` new sales each,
one after another as the driver makes them (`SalesTable.upsert_days`, the call a commit of
gathered batches makes), each row with a `--dim`-float embedding (1024: Titan's). It prints
each catalog's commits a minute and the rows a second one committer sustains at that size.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa

from sales_data import BUSINESS_DAY, TENANTS
from smartgo_exporter.config import TableConfig
from smartgo_exporter.demo.aws_local import aws_environment, run_seaweedfs
from smartgo_exporter.logs import configure_logging
from smartgo_exporter.schema import ARROW_SCHEMA
from smartgo_exporter.sinks.iceberg import SalesTable


def new_sales(first: int, count: int, dim: int, rng: np.random.Generator) -> pa.Table:
    """Sales `first` to `first + count - 1` of the day, each embedded, as a commit holds them."""
    ids = [str(n) for n in range(first, first + count)]
    midnight = datetime.combine(BUSINESS_DAY, datetime.min.time(), UTC)
    sold_at = [midnight + timedelta(seconds=(n * 7) % 86_400) for n in range(first, first + count)]
    which = rng.integers(0, len(TENANTS), count)
    vectors = rng.standard_normal((count, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    columns = {
        "sale_id": ids,
        "tenant_id": [TENANTS[w][0] for w in which],
        "product_id": [f"SKU-{n}" for n in ids],
        "sold_at": sold_at,
        "sale_price": [Decimal("19.99")] * count,
        "currency": [TENANTS[w][1] for w in which],
        "title": ["Levi's navy jeans"] * count,
        "image_url": [f"https://photos.example/{n}.jpg" for n in ids],
        "image_sha256": [secrets.token_hex(32) for _ in ids],
        "image_width": [800] * count,
        "image_height": [800] * count,
        "embedding": pa.FixedSizeListArray.from_arrays(vectors.ravel(), dim).cast(
            ARROW_SCHEMA.field("embedding").type
        ),
        "embedding_model": ["bench-model"] * count,
        "embedding_dim": [dim] * count,
        "embedding_status": ["ok"] * count,
        "source": ["smartgo"] * count,
        "export_run_id": ["bench"] * count,
        "exported_at": [midnight] * count,
    }
    return pa.table(
        {
            field.name: (
                pa.array(columns[field.name], field.type)
                if field.name in columns
                else pa.nulls(count, field.type)
            )
            for field in ARROW_SCHEMA
        },
        schema=ARROW_SCHEMA,
    )


def commits_per_minute(config: TableConfig, commits: int, rows: int, dim: int) -> float:
    """Commit `commits` times `rows` new sales into a new table; commits a minute."""
    table = SalesTable.open(config, source="smartgo")
    rng = np.random.default_rng(0)
    batches = [new_sales(1 + n * rows, rows, dim, rng) for n in range(commits)]
    table.upsert_days(batches[0], run_ids=["warm-up"], business_date=BUSINESS_DAY)
    start = time.perf_counter()
    for number, batch in enumerate(batches[1:], start=1):
        table.upsert_days(batch, run_ids=[f"run-{number}"], business_date=BUSINESS_DAY)
    return (commits - 1) / (time.perf_counter() - start) * 60


def sql_catalog(work: Path) -> TableConfig:
    return TableConfig(
        catalog={
            "type": "sql",
            "uri": f"sqlite:///{work / 'catalog.db'}",
            "warehouse": (work / "warehouse").as_uri(),
        }
    )


@contextlib.contextmanager
def seaweedfs_catalog(work: Path) -> Iterator[TableConfig]:
    """SeaweedFS's Iceberg REST catalog, configured as production's S3 Tables is."""
    access_key, secret_key = "AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    with run_seaweedfs(work, access_key=access_key, secret_key=secret_key) as seaweed:
        environment = aws_environment(
            access_key=access_key,
            secret_key=secret_key,
            region=seaweed.region,
            unaimed_clients_go_to=seaweed.s3_endpoint,
        )
        with environment:
            yield TableConfig(
                catalog={
                    "type": "s3tables",
                    "warehouse": seaweed.warehouse,
                    "region": seaweed.region,
                    "uri": seaweed.iceberg_endpoint,
                    "s3.endpoint": seaweed.s3_endpoint,
                },
                namespace="bench_commit_rate",
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=11, help="commits, the first a warm-up")
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--dim", type=int, default=1024, help="floats per embedding")
    options = parser.parse_args()
    configure_logging("WARNING")
    print(f"{'catalog':<26} {'rows/commit':>11} {'commits/min':>12} {'rows/s':>8}")
    with tempfile.TemporaryDirectory(prefix="bench-commits-") as folder:
        root = Path(folder)
        for rows in options.rows:
            for name in ("sql (sqlite, file://)", "seaweedfs iceberg rest"):
                work = root / f"{name.split()[0]}-{rows}"
                work.mkdir()
                with contextlib.ExitStack() as stack:
                    config = (
                        sql_catalog(work)
                        if name.startswith("sql")
                        else stack.enter_context(seaweedfs_catalog(work))
                    )
                    rate = commits_per_minute(config, options.commits, rows, options.dim)
                print(f"{name:<26} {rows:>11,} {rate:12.1f} {rate * rows / 60:8,.0f}")


if __name__ == "__main__":
    main()
