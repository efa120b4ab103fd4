"""The exporter's job done by Daft: a day of sales, their photos, the local model, an Iceberg table.

`bench_export.py` runs this beside the exporter's cold export. The question is what the
exporter's own pipeline (its fetcher, its decode pool overlapping the model, its batching) is
worth against a general-purpose multimodal dataframe engine given the same work and the same
parts, so only the engine differs:

- the day's sales are read from the same SQLite database (`SALES_QUERY`), with sqlite3 into
  Arrow and `daft.from_arrow`: faster than `daft.read_sql` with a SQLAlchemy connection factory
  (which runs the query twice, once to infer types from its first 10 rows, and takes no bind
  parameters);
- each photo is downloaded by Daft's own HTTP client (`Expression.download`, nulls on error);
- the embedding is made by a Daft class UDF around the exporter's `LocalEmbedder`: the same
  EfficientNet-Lite0 graph on the same onnxruntime, constructed once per UDF instance and called
  on a batch of photo bytes at a time;
- the rows are appended with `write_iceberg` to a new table in a pyiceberg SQL catalog on SQLite
  with a file:// warehouse, partitioned like the exporter's (tenant, month of sold_at), with
  sold_at and sale_price typed as the exporter types them.

Daft does only what a first export must: no upsert, no reuse of earlier embeddings, no run
record. A photo that cannot be downloaded or embedded gets a null embedding, where the exporter
records why.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from time import perf_counter

import daft
import numpy as np
import pyarrow as pa
from daft import DataType, Expression, col
from pyiceberg.catalog import load_catalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import IdentityTransform, MonthTransform
from pyiceberg.types import (
    DecimalType,
    FloatType,
    ListType,
    NestedField,
    StringType,
    TimestamptzType,
)

from smartgo_exporter.config import LocalEmbedderConfig
from smartgo_exporter.embedders.local import LocalEmbedder

SALES_QUERY = """
SELECT CAST(id AS TEXT) AS sale_id, store_id AS tenant_id, sku AS product_id, sold_at,
       price AS sale_price, currency, photo_url, title
FROM sales
WHERE sold_at >= :start AND sold_at < :end
"""
"""The day's sales from the demo store's `sales` table (see `sales_data.py`), named as the
exporter names its fields; `sold_at` is naive UTC text, so the day's bounds compare as text."""
DOWNLOAD_CONNECTIONS = 8
ONNX_THREADS = 1
"""The embedder's workers per UDF instance. Daft's native runner runs one instance per core, as
threads of this process; on 2 cores, one each beat the default of one per core each in 8 of 9
paired runs, by 10 to 30%."""
CATALOG_NAME = "bench"
TABLE_IDENTIFIER = ("daft", "sales")
EMBEDDING = DataType.list(DataType.float32())

TABLE_SCHEMA = Schema(
    NestedField(1, "sale_id", StringType(), required=False),
    NestedField(2, "tenant_id", StringType(), required=False),
    NestedField(3, "product_id", StringType(), required=False),
    NestedField(4, "sold_at", TimestamptzType(), required=False),
    NestedField(5, "sale_price", DecimalType(12, 2), required=False),
    NestedField(6, "currency", StringType(), required=False),
    NestedField(7, "photo_url", StringType(), required=False),
    NestedField(8, "title", StringType(), required=False),
    NestedField(9, "embedding", ListType(10, FloatType(), element_required=False), required=False),
)
PARTITION_SPEC = PartitionSpec(
    PartitionField(source_id=2, field_id=1000, transform=IdentityTransform(), name="tenant_id"),
    PartitionField(source_id=4, field_id=1001, transform=MonthTransform(), name="sold_at_month"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class DaftResult:
    rows: int
    """Rows in the table after the job, checked against the rows Daft reports it wrote."""
    embedded: int
    """Rows with an embedding: their photo was downloaded and the model took it."""
    seconds: float
    """Wall time from the start of the read to the end of the Iceberg commit. It includes each
    UDF instance's model construction (Daft constructs them as the query runs) and the first
    import of onnx and onnxruntime, as the exporter's cold export does; not the table's creation."""
    model_seconds: float
    """One LocalEmbedder construction, timed after the job (imports done): roughly what each UDF
    instance spent of `seconds` before its first batch."""


def photo_embedder(batch_size: int) -> Callable[..., Expression]:
    """The exporter's local model as a Daft class UDF taking at most `batch_size` photos a call.

    Daft constructs the class once per UDF instance, when the query runs, and calls `embed` on
    a Series of photo bytes; a null photo, or one the model refuses, gets a null embedding. A
    factory, since `@daft.method.batch` fixes the batch size when the class is defined. Daft's
    placement is left as it is: setting `max_concurrency` moves the instances into worker
    processes, which was slower here (and `use_process=False` does not keep them in this one).
    """

    @daft.cls
    class PhotoEmbedder:
        def __init__(self) -> None:
            self._embedder = LocalEmbedder(LocalEmbedderConfig(threads=ONNX_THREADS))

        @daft.method.batch(return_dtype=EMBEDDING, batch_size=batch_size)
        def embed(self, photos: daft.Series) -> pa.Array:
            images = photos.to_pylist()
            present = [index for index, image in enumerate(images) if image is not None]
            vectors: list[np.ndarray | None] = [None] * len(images)
            outcomes = self._embedder.embed([images[index] for index in present])
            for index, outcome in zip(present, outcomes, strict=True):
                if isinstance(outcome, np.ndarray):
                    vectors[index] = outcome
            return pa.array(vectors, type=pa.list_(pa.float32()))

    return PhotoEmbedder().embed


def read_sales(sales_db: Path, day: date) -> pa.Table:
    """The day's sales as Arrow, every column as the database stores it (text)."""
    bounds = {"start": day.isoformat(), "end": (day + timedelta(days=1)).isoformat()}
    connection = sqlite3.connect(f"{sales_db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        cursor = connection.execute(SALES_QUERY, bounds)
        names = [column[0] for column in cursor.description]
        rows = cursor.fetchall()
    finally:
        connection.close()
    return pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})


def run_daft_job(sales_db: Path, day: date, warehouse: Path, *, batch_size: int = 32) -> DaftResult:
    """Read, download, embed and append one day of sales with Daft, into a new table.

    `warehouse` is made if missing and holds the catalog database and the table's files; the
    table must not exist yet. `batch_size` is the photos per UDF call; the model inside takes
    them in the exporter's own `embedder.batch_size`. Raises if the committed table does not
    hold the rows Daft wrote.

        result = run_daft_job(Path("sales.db"), date(2026, 10, 21), Path("daft-warehouse"))
        print(f"{result.rows / result.seconds:.1f} sales/s, {result.embedded} embedded")
    """
    warehouse = warehouse.resolve()
    warehouse.mkdir(parents=True, exist_ok=True)
    catalog = load_catalog(
        CATALOG_NAME,
        type="sql",
        uri=f"sqlite:///{warehouse}/catalog.db",
        warehouse=warehouse.as_uri(),
    )
    catalog.create_namespace_if_not_exists(TABLE_IDENTIFIER[0])
    table = catalog.create_table(TABLE_IDENTIFIER, TABLE_SCHEMA, partition_spec=PARTITION_SPEC)
    embed = photo_embedder(batch_size)

    start = perf_counter()
    sales = daft.from_arrow(read_sales(sales_db, day))
    photos = col("photo_url").download(max_connections=DOWNLOAD_CONNECTIONS, on_error="null")
    sales = sales.with_columns(
        {
            "sold_at": col("sold_at").cast(DataType.timestamp("us", "UTC")),
            "sale_price": col("sale_price").cast(DataType.decimal128(12, 2)),
            "embedding": embed(photos),
        }
    )
    written = sum(sales.write_iceberg(table, mode="append").to_pydict()["rows"])
    seconds = perf_counter() - start

    start = perf_counter()
    LocalEmbedder(LocalEmbedderConfig(threads=ONNX_THREADS))
    model_seconds = perf_counter() - start
    rows, embedded = _count(catalog.load_table(TABLE_IDENTIFIER))
    if rows != written:
        raise RuntimeError(f"the table holds {rows} rows where Daft wrote {written}")
    return DaftResult(rows, embedded, seconds, model_seconds)


def _count(table: Table) -> tuple[int, int]:
    """(rows, rows with an embedding) of the table as committed."""
    embeddings = table.scan(selected_fields=("embedding",)).to_arrow()["embedding"]
    return len(embeddings), len(embeddings) - embeddings.null_count
