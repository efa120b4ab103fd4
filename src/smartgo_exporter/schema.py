"""The table: its one schema, in Iceberg and Arrow form, and the rows that go into it.

A `SaleRow` is a sale with the outcome of its photo; `rows_to_arrow` turns rows into the Arrow
batch the sink writes, and `StoredRows` is what the table already holds for some keys.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.types import (
    DecimalType,
    FloatType,
    IntegerType,
    ListType,
    NestedField,
    StringType,
    TimestamptzType,
)

from smartgo_exporter.sales import MONEY_PRECISION, MONEY_SCALE, SALE_FIELDS, Key, Sale

TABLE_KEY = ("source", "tenant_id", "sale_id")
"""The upsert key: ids repeat across stores, and a second exporter may share the table."""


class EmbeddingStatus:
    """Values of the `embedding_status` column."""

    OK = "ok"
    NO_IMAGE = "no_image"

    FAILED_PREFIX = "failed:"

    @staticmethod
    def failed(reason: str) -> str:
        return f"{EmbeddingStatus.FAILED_PREFIX}{reason}"

    @staticmethod
    def failure_reason(status: str) -> str | None:
        """The reason of a `failed:<reason>` status; None for any other status."""
        if not status.startswith(EmbeddingStatus.FAILED_PREFIX):
            return None
        return status.removeprefix(EmbeddingStatus.FAILED_PREFIX)


@dataclasses.dataclass(frozen=True, slots=True)
class Embedding:
    """What was embedded for one sale: the vector and the photo it came from."""

    vector: np.ndarray[Any, np.dtype[np.float32]]
    model: str
    image_sha256: str
    image_width: int
    image_height: int


@dataclasses.dataclass(frozen=True, slots=True)
class SaleRow:
    """A sale with the outcome of its photo: an embedding, or the status that says why not.

    A failed photo also carries what its retry schedule needs (`photo_retries`): `failures`,
    how many fetches in a row failed it for this reason, and `failed_at`, the start of the
    last run that failed it; 0 and None otherwise, stored as nulls.
    """

    sale: Sale
    status: str
    embedding: Embedding | None = None
    failures: int = 0
    failed_at: datetime | None = None


@dataclasses.dataclass(frozen=True)
class StoredRows:
    """The rows the table already holds for some keys, as one Arrow table with a key index."""

    table: pa.Table
    index: dict[Key, int]

    def __contains__(self, key: Key) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.index)

    def row(self, key: Key) -> dict[str, Any]:
        """Every column but the embedding, as Python values."""
        return self._rows[self.index[key]]

    @functools.cached_property
    def _rows(self) -> list[dict[str, Any]]:
        # Converted once, column by column: a batch looks up each of its sales twice (reuse,
        # then change detection), and cell-by-cell conversion cost 50 ms per 500 sales.
        columns = [name for name in self.table.column_names if name != "embedding"]
        rows: list[dict[str, Any]] = self.table.select(columns).to_pylist()
        return rows

    def positions(self, keys: Sequence[Key]) -> pa.Int64Array:
        """Each key's row in `table`, null for a key the table does not hold: what `aligned`
        takes, so that a batch is compared with its stored rows column by column."""
        index = self.index
        return pa.array([index.get(key) for key in keys], type=pa.int64())

    def aligned(self, positions: pa.Int64Array, columns: Sequence[str]) -> pa.Table:
        """The stored `columns` at `positions`, in their order: a row of nulls where a position
        is null, and a column of nulls, of the schema's type, for a column the table predates
        (one opened without adding the failure columns)."""
        present = [name for name in columns if name in self.table.column_names]
        taken = self.table.select(present).take(positions)
        return pa.table(
            {
                name: taken.column(name)
                if name in present
                else pa.nulls(len(positions), ARROW_SCHEMA.field(name).type)
                for name in columns
            }
        )

    def vectors(self, positions: Sequence[int]) -> list[np.ndarray[Any, np.dtype[np.float32]]]:
        """The embeddings at `positions` (rows that hold one), as views of the table's buffers:
        a re-run reuses thousands a batch, and copying them out cost more than comparing."""
        chunks = self.table.column("embedding").chunks
        starts = np.cumsum([0] + [len(chunk) for chunk in chunks])
        parts = [
            (
                chunk.offsets.to_numpy(),
                np.asarray(chunk.values.to_numpy(zero_copy_only=False), dtype=np.float32),
            )
            for chunk in chunks
        ]
        which = np.searchsorted(starts, positions, side="right") - 1
        vectors = []
        for position, chunk in zip(positions, which.tolist(), strict=True):
            offsets, values = parts[chunk]
            row = position - int(starts[chunk])
            vectors.append(values[offsets[row] : offsets[row + 1]])
        return vectors

    def vector(self, key: Key) -> np.ndarray[Any, np.dtype[np.float32]] | None:
        cell = self.table.column("embedding")[self.index[key]]
        if not cell.is_valid:
            return None
        return np.asarray(cell.values.to_numpy(zero_copy_only=False), dtype=np.float32)


ICEBERG_SCHEMA = Schema(
    NestedField(1, "sale_id", StringType(), required=True),
    NestedField(2, "tenant_id", StringType(), required=True),
    NestedField(3, "product_id", StringType(), required=True),
    NestedField(4, "sold_at", TimestamptzType(), required=True),
    NestedField(5, "sale_price", DecimalType(MONEY_PRECISION, MONEY_SCALE), required=True),
    NestedField(6, "list_price", DecimalType(MONEY_PRECISION, MONEY_SCALE), required=False),
    NestedField(7, "currency", StringType(), required=True),
    NestedField(8, "title", StringType(), required=False),
    NestedField(9, "brand", StringType(), required=False),
    NestedField(10, "category", StringType(), required=False),
    NestedField(11, "condition", StringType(), required=False),
    NestedField(12, "image_url", StringType(), required=False),
    NestedField(13, "image_sha256", StringType(), required=False),
    NestedField(14, "image_width", IntegerType(), required=False),
    NestedField(15, "image_height", IntegerType(), required=False),
    NestedField(
        16,
        "embedding",
        ListType(element_id=24, element_type=FloatType(), element_required=True),
        required=False,
    ),
    NestedField(17, "embedding_model", StringType(), required=False),
    NestedField(18, "embedding_dim", IntegerType(), required=False),
    NestedField(19, "embedding_status", StringType(), required=True),
    NestedField(20, "source", StringType(), required=True),
    NestedField(21, "source_updated_at", TimestamptzType(), required=False),
    NestedField(22, "export_run_id", StringType(), required=False),
    NestedField(23, "exported_at", TimestamptzType(), required=False),
    # Ids after the embedding's element (24); older tables gain these columns when opened.
    NestedField(25, "photo_failures", IntegerType(), required=False),
    NestedField(26, "photo_failed_at", TimestamptzType(), required=False),
    identifier_field_ids=[],
)

ARROW_SCHEMA: pa.Schema = schema_to_pyarrow(ICEBERG_SCHEMA, include_field_ids=False)
"""The Arrow form of ICEBERG_SCHEMA, derived from it so the two cannot drift."""


def rows_to_arrow(
    rows: Sequence[SaleRow], *, source: str, run_id: str, exported_at: datetime
) -> pa.Table:
    """Columnar batch of rows ready for the table."""
    columns: dict[str, list[Any]] = {name: [] for name in ARROW_SCHEMA.names}
    for row in rows:
        sale, emb = row.sale, row.embedding
        for name in SALE_FIELDS:
            columns[name].append(getattr(sale, name))
        columns["image_sha256"].append(emb.image_sha256 if emb else None)
        columns["image_width"].append(emb.image_width if emb else None)
        columns["image_height"].append(emb.image_height if emb else None)
        columns["embedding"].append(emb.vector if emb else None)
        columns["embedding_model"].append(emb.model if emb else None)
        columns["embedding_dim"].append(len(emb.vector) if emb else None)
        columns["embedding_status"].append(row.status)
        columns["source"].append(source)
        columns["export_run_id"].append(run_id)
        columns["exported_at"].append(exported_at)
        columns["photo_failures"].append(row.failures or None)
        columns["photo_failed_at"].append(row.failed_at)
    return pa.table(
        {name: _column(name, values) for name, values in columns.items()}, schema=ARROW_SCHEMA
    )


def _column(name: str, values: list[Any]) -> pa.Array:
    field = ARROW_SCHEMA.field(name)
    if name != "embedding":
        return pa.array(values, type=field.type)
    # Build the list column from one flat float32 buffer: per-row Python lists of 1,280 floats
    # would cost more than the model does.
    present = [v for v in values if v is not None]
    flat = (
        np.concatenate(present).astype(np.float32, copy=False)
        if present
        else np.empty(0, np.float32)
    )
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum([0 if v is None else len(v) for v in values], out=offsets[1:])
    mask = pa.array([v is None for v in values], type=pa.bool_())
    return pa.LargeListArray.from_arrays(
        pa.array(offsets), pa.array(flat, type=pa.float32()), type=field.type, mask=mask
    )
