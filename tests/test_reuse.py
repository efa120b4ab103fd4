"""A re-run writes only the rows that differ from the table's, and reuses only the embeddings
still good for their sale: compared as the table stores values, two nulls alike, a value and a
null not, text byte for byte."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pyarrow as pa

from smartgo_exporter.photo_retries import RetryPolicy
from smartgo_exporter.reuse import changed_rows, plan_batch
from smartgo_exporter.run_records import RunCounts
from smartgo_exporter.sales import Sale
from smartgo_exporter.schema import Embedding, EmbeddingStatus, SaleRow, StoredRows, rows_to_arrow
from tests.test_schema import NOW, SALE

VECTOR = np.arange(4, dtype=np.float32)
EMBEDDED = SaleRow(SALE, EmbeddingStatus.OK, Embedding(VECTOR, "model-a", "ab" * 32, 64, 48))
OTHER = Sale(
    sale_id="1002",
    tenant_id="store-paris",
    product_id="SKU-2",
    sold_at=datetime(2026, 11, 26, 15, 0, tzinfo=UTC),
    sale_price=Decimal("9.00"),
    currency="EUR",
    title="Navy jeans",
)


def stored(*rows: SaleRow) -> StoredRows:
    table = rows_to_arrow(list(rows), source="smartgo", run_id="r0", exported_at=NOW)
    return StoredRows(table, {row.sale.key: n for n, row in enumerate(rows)})


def changed(row: SaleRow, table: StoredRows) -> bool:
    return changed_rows([row], table, RunCounts()) == [row]


def with_sale(row: SaleRow, **fields: object) -> SaleRow:
    return dataclasses.replace(row, sale=dataclasses.replace(row.sale, **fields))


def test_a_rerun_of_the_rows_as_stored_writes_nothing_and_counts_them_unchanged() -> None:
    rows = [EMBEDDED, SaleRow(OTHER, EmbeddingStatus.NO_IMAGE)]
    counts = RunCounts()
    assert changed_rows(rows, stored(*rows), counts) == []
    assert (counts.written, counts.unchanged) == (0, 2)


def test_a_sale_the_table_does_not_hold_is_written() -> None:
    counts = RunCounts()
    new = SaleRow(OTHER, EmbeddingStatus.NO_IMAGE)
    assert changed_rows([EMBEDDED, new], stored(EMBEDDED), counts) == [new]
    assert (counts.written, counts.unchanged) == (1, 1)


def test_a_missing_list_price_that_becomes_a_value_is_a_change() -> None:
    assert changed(with_sale(EMBEDDED, list_price=Decimal("30.00")), stored(EMBEDDED))


def test_a_list_price_that_becomes_missing_is_a_change() -> None:
    priced = with_sale(EMBEDDED, list_price=Decimal("30.00"))
    assert changed(EMBEDDED, stored(priced))


def test_a_price_written_at_another_scale_is_the_same_price() -> None:
    assert not changed(with_sale(EMBEDDED, sale_price=Decimal("24.5")), stored(EMBEDDED))


def test_a_price_one_cent_off_is_a_change() -> None:
    assert changed(with_sale(EMBEDDED, sale_price=Decimal("24.51")), stored(EMBEDDED))


def test_a_title_differing_only_in_spaces_is_a_change() -> None:
    titled = with_sale(EMBEDDED, title="Navy jeans")
    assert changed(with_sale(EMBEDDED, title="Navy  jeans"), stored(titled))
    assert changed(with_sale(EMBEDDED, title="Navy\u00a0jeans"), stored(titled))


def test_an_empty_title_is_not_a_missing_one() -> None:
    assert changed(with_sale(EMBEDDED, title=""), stored(EMBEDDED))


def test_the_same_instant_given_in_another_zone_is_the_same_time() -> None:
    paris = SALE.sold_at.astimezone(timezone(timedelta(hours=1)))
    assert not changed(with_sale(EMBEDDED, sold_at=paris), stored(EMBEDDED))


def test_a_sale_time_a_microsecond_later_is_a_change() -> None:
    later = SALE.sold_at + timedelta(microseconds=1)
    assert changed(with_sale(EMBEDDED, sold_at=later), stored(EMBEDDED))


def test_an_embedding_of_another_photo_is_a_change_though_the_url_is_the_same() -> None:
    other = dataclasses.replace(EMBEDDED.embedding, image_sha256="cd" * 32)
    assert changed(dataclasses.replace(EMBEDDED, embedding=other), stored(EMBEDDED))


def test_a_photo_that_now_fails_is_a_change() -> None:
    failed = SaleRow(SALE, EmbeddingStatus.failed("http_404"), failures=1, failed_at=NOW)
    assert changed(failed, stored(EMBEDDED))


def test_each_row_is_compared_with_its_own_key_s_stored_row_whatever_the_table_s_order() -> None:
    rows = [EMBEDDED, SaleRow(OTHER, EmbeddingStatus.NO_IMAGE)]
    table = stored(*reversed(rows))
    assert changed_rows(rows, table, RunCounts()) == []
    assert changed(with_sale(rows[1], title="Black jeans"), table)


def test_a_table_read_with_large_strings_compares_by_value() -> None:
    table = stored(EMBEDDED)
    large = pa.schema(
        field.with_type(pa.large_string()) if field.type == pa.string() else field
        for field in table.table.schema
    )
    assert not changed(EMBEDDED, StoredRows(table.table.cast(large), table.index))


def reuse(sale: Sale, table: StoredRows, *, include_title: bool = False) -> SaleRow | None:
    counts = RunCounts()
    plan = plan_batch(
        [sale],
        table,
        "model-a",
        counts,
        retries=RetryPolicy(),
        now=NOW,
        include_title=include_title,
    )
    return plan.settled[0] if counts.reused else None


def test_a_stored_embedding_of_the_same_photo_and_model_is_reused_as_stored() -> None:
    row = reuse(SALE, stored(EMBEDDED))
    assert row is not None
    assert row.embedding is not None
    np.testing.assert_array_equal(row.embedding.vector, VECTOR)
    assert dataclasses.replace(row.embedding, vector=VECTOR) == EMBEDDED.embedding
    assert changed_rows([row], stored(EMBEDDED), RunCounts()) == []


def test_an_embedding_of_another_model_or_url_is_not_reused() -> None:
    moved = with_sale(EMBEDDED, image_url="https://photos.example/2.jpg", fetch_url=None)
    assert reuse(SALE, stored(moved)) is None
    other_model = dataclasses.replace(EMBEDDED.embedding, model="model-b")
    assert reuse(SALE, stored(dataclasses.replace(EMBEDDED, embedding=other_model))) is None


def test_an_ok_row_stored_without_its_vector_is_not_reused() -> None:
    table = stored(EMBEDDED)
    column = table.table.schema.get_field_index("embedding")
    empty = pa.nulls(1, table.table.schema.field("embedding").type)
    without = StoredRows(table.table.set_column(column, "embedding", empty), table.index)
    assert reuse(SALE, without) is None


def test_a_changed_title_needs_a_new_embedding_only_for_a_model_that_embeds_titles() -> None:
    retitled = dataclasses.replace(SALE, title="Navy jeans")
    assert reuse(retitled, stored(EMBEDDED)) is not None
    assert reuse(retitled, stored(EMBEDDED), include_title=True) is None


def test_embeddings_are_reused_from_a_table_read_in_several_chunks() -> None:
    photographed = dataclasses.replace(OTHER, image_url="https://photos.example/2.jpg")
    second = SaleRow(
        photographed, EmbeddingStatus.OK, Embedding(VECTOR + 10, "model-a", "cd" * 32, 64, 48)
    )
    first, last = stored(EMBEDDED), stored(second)
    table = StoredRows(pa.concat_tables([first.table, last.table]), {SALE.key: 0, OTHER.key: 1})
    counts = RunCounts()
    plan = plan_batch(
        [photographed, SALE], table, "model-a", counts, retries=RetryPolicy(), now=NOW
    )
    vectors = [row.embedding.vector.tolist() for row in plan.settled if row.embedding]
    assert vectors == [(VECTOR + 10).tolist(), VECTOR.tolist()]
