"""What deciding a re-run's batch costs: which stored embeddings it reuses (`plan_batch`) and
which rows differ from the table's (`changed_rows`), on a batch whose every sale is unchanged.

Run with the dev environment: `.venv/bin/python benchmarks/bench_stored_compare.py`. The batch
(10,000 sales by default, four in five with a photo and a 1,280-float embedding) is stored as
the table would hold it, then planned and compared against it, best of `--repeat`, each time
with fresh `StoredRows`, as every batch of a run gets.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np

from smartgo_exporter.photo_retries import RetryPolicy
from smartgo_exporter.reuse import changed_rows, plan_batch
from smartgo_exporter.run_records import RunCounts
from smartgo_exporter.sales import Sale
from smartgo_exporter.schema import Embedding, EmbeddingStatus, SaleRow, StoredRows, rows_to_arrow

START = datetime(2026, 10, 21, tzinfo=UTC)
MODEL = "model-a"


def stored_batch(sales: int) -> list[SaleRow]:
    rng = np.random.default_rng(0)
    rows = []
    for n in range(sales):
        sale = Sale(
            sale_id=str(n),
            tenant_id="ldn-camden",
            product_id=f"SKU-{n}",
            sold_at=START + timedelta(seconds=n),
            sale_price=Decimal(n).scaleb(-2),
            currency="GBP",
            list_price=None if n % 3 else Decimal("9.99"),
            title=f"Navy jeans {n}",
            brand="COS",
            category="Trousers",
            condition="good",
            image_url=None if n % 5 == 0 else f"https://photos.example/{n}.jpg",
            source_updated_at=START,
        )
        if sale.image_url is None:
            rows.append(SaleRow(sale, EmbeddingStatus.NO_IMAGE))
            continue
        vector = rng.random(1280, dtype=np.float32)
        rows.append(
            SaleRow(sale, EmbeddingStatus.OK, Embedding(vector, MODEL, f"{n:064x}", 64, 48))
        )
    return rows


def measure(sales: int, repeat: int) -> None:
    rows = stored_batch(sales)
    table = rows_to_arrow(rows, source="smartgo", run_id="r0", exported_at=START)
    batch = [row.sale for row in rows]
    planning, comparing = [], []
    for _ in range(repeat):
        stored = StoredRows(table, {row.sale.key: n for n, row in enumerate(rows)})
        start = time.perf_counter()
        plan = plan_batch(batch, stored, MODEL, RunCounts(), retries=RetryPolicy(), now=START)
        planned = time.perf_counter()
        changed = changed_rows(plan.settled, stored, RunCounts())
        compared = time.perf_counter()
        if changed or len(plan.settled) != sales:
            raise RuntimeError(f"{len(changed)} rows changed, {len(plan.to_fetch)} to fetch")
        planning.append(planned - start)
        comparing.append(compared - planned)
    print(f"{'sales':>7} {'plan_batch ms':>14} {'changed_rows ms':>16} {'total ms':>9}")
    print(
        f"{sales:>7,} {min(planning) * 1000:14.0f} {min(comparing) * 1000:16.0f}"
        f" {(min(planning) + min(comparing)) * 1000:9.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sales", type=int, default=10_000, help="sales of the batch")
    parser.add_argument("--repeat", type=int, default=5, help="runs, the best one kept")
    args = parser.parse_args()
    measure(args.sales, args.repeat)


if __name__ == "__main__":
    main()
