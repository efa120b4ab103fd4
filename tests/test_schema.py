"""The table's schema has one source, and rows become Arrow batches of exactly that schema."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np

from smartgo_exporter.sales import Sale
from smartgo_exporter.schema import ARROW_SCHEMA, ICEBERG_SCHEMA, Embedding, SaleRow, rows_to_arrow

NOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
SALE = Sale(
    sale_id="1001",
    tenant_id="store-paris",
    product_id="SKU-1",
    sold_at=datetime(2026, 11, 26, 14, 30, tzinfo=UTC),
    sale_price=Decimal("24.50"),
    currency="EUR",
    image_url="https://photos.example/1.jpg",
)


def test_the_arrow_schema_is_derived_from_the_iceberg_schema() -> None:
    assert ARROW_SCHEMA.names == [field.name for field in ICEBERG_SCHEMA.fields]


def test_rows_become_an_arrow_batch_with_float32_embeddings_and_nulls() -> None:
    sale = SALE
    vector = np.full(4, 0.5, dtype=np.float32)
    batch = rows_to_arrow(
        [
            SaleRow(sale, "ok", Embedding(vector, "model-a", "ab" * 32, 640, 480)),
            SaleRow(sale, "no_image"),
        ],
        source="smartgo",
        run_id="run-1",
        exported_at=NOW + timedelta(hours=1),
    )
    assert batch.schema == ARROW_SCHEMA
    assert batch.column("embedding").to_pylist() == [[0.5] * 4, None]
    assert batch.column("embedding_dim").to_pylist() == [4, None]
    assert batch.column("sale_price").to_pylist() == [Decimal("24.50")] * 2
