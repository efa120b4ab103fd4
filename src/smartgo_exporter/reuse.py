"""Deciding, from what the table already holds, what a batch of sales still needs.

Embedding is the expensive part of a run, and re-runs are common (catch-up, fixes, a retried
Lambda), so a sale whose photo URL is unchanged and that already has an embedding from the same
model takes it from the table instead of fetching and embedding again; a sale whose photo
failed for good is not fetched again before its retry is due (`photo_retries`); and a row that
would be written exactly as it is stored is not written at all, so a re-run of an unchanged day
commits nothing.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from smartgo_exporter.photo_retries import PhotoFailure, RetryPolicy, kept_row
from smartgo_exporter.run_records import RunCounts
from smartgo_exporter.sales import SALE_FIELDS, Sale
from smartgo_exporter.schema import ARROW_SCHEMA, Embedding, EmbeddingStatus, SaleRow, StoredRows


@dataclasses.dataclass(slots=True)
class BatchPlan:
    """A batch split by what each sale needs before it can be written."""

    settled: list[SaleRow] = dataclasses.field(default_factory=list)
    """Rows complete already: an embedding taken from the table, no photo to fetch, or a
    failed photo whose retry is not due."""
    to_fetch: list[Sale] = dataclasses.field(default_factory=list)


def plan_batch(
    sales: Sequence[Sale],
    stored: StoredRows,
    model_id: str,
    counts: RunCounts,
    *,
    retries: RetryPolicy,
    now: datetime,
    include_title: bool = False,
) -> BatchPlan:
    """Split sales into those complete already and those whose photo must be fetched, counting
    the reused embeddings, the sales without a photo and the deferred retries into `counts`.

    A stored failure of the same photo URL is fetched again only when `retries` says it is due
    at `now` (the run's start); until then the sale keeps its stored status and failure count.
    With `include_title` (a model that embeds the title with the photo), a changed title also
    needs a new embedding.
    """
    photos = _StoredPhotos.of(sales, stored, model_id, include_title)
    plan = BatchPlan()
    for position, sale in enumerate(sales):
        if sale.image_url is None:
            plan.settled.append(SaleRow(sale, EmbeddingStatus.NO_IMAGE))
            counts.no_image += 1
            continue
        embedding = photos.embeddings.get(position)
        if embedding is not None:
            plan.settled.append(SaleRow(sale, EmbeddingStatus.OK, embedding))
            counts.reused += 1
            continue
        failure = photos.failures.get(position)
        if failure is not None and not retries.due(failure, now):
            plan.settled.append(kept_row(sale, failure))
            counts.deferred += 1
        else:
            plan.to_fetch.append(sale)
    return plan


@dataclasses.dataclass(frozen=True, slots=True)
class _StoredPhotos:
    """What the table holds of a batch's photos, by the sale's position in the batch: the
    embeddings still good for its sales, and the failures of their photos at the same URL
    (what `photo_retries.stored_failure` finds, for the whole batch at once)."""

    embeddings: dict[int, Embedding]
    failures: dict[int, PhotoFailure]

    @classmethod
    def of(
        cls, sales: Sequence[Sale], stored: StoredRows, model_id: str, include_title: bool
    ) -> _StoredPhotos:
        if not sales or not len(stored):
            return cls({}, {})
        positions = stored.positions([sale.key for sale in sales])
        old = stored.aligned(positions, _PHOTO_COLUMNS)
        same_photo = _same(_sale_column(sales, "image_url"), old.column("image_url"))
        status = old.column("embedding_status")
        reusable = pc.and_(same_photo, _is(status, EmbeddingStatus.OK))
        reusable = pc.and_(reusable, _is(old.column("embedding_model"), model_id))
        vectors_held = pc.is_valid(stored.table.column("embedding")).take(positions)
        reusable = pc.and_(reusable, pc.fill_null(vectors_held, False))
        if include_title:
            reusable = pc.and_(reusable, _same(_sale_column(sales, "title"), old.column("title")))
        failed = pc.and_(
            same_photo,
            pc.fill_null(pc.starts_with(status, EmbeddingStatus.FAILED_PREFIX), False),
        )
        return cls(
            _stored_embeddings(stored, positions, old, reusable),
            _stored_failures(old, failed),
        )


_PHOTO_COLUMNS = (
    "image_url",
    "title",
    "embedding_status",
    "embedding_model",
    "image_sha256",
    "image_width",
    "image_height",
    "photo_failures",
    "photo_failed_at",
)


def _stored_embeddings(
    stored: StoredRows, positions: pa.Int64Array, old: pa.Table, reusable: pa.BooleanArray
) -> dict[int, Embedding]:
    which = pc.indices_nonzero(reusable).to_pylist()
    if not which:
        return {}
    vectors = stored.vectors(positions.filter(reusable).to_pylist())
    held = old.filter(reusable)
    held = held.select(["embedding_model", "image_sha256", "image_width", "image_height"])
    return {
        position: Embedding(
            vector=vector,
            model=row["embedding_model"],
            image_sha256=row["image_sha256"],
            image_width=row["image_width"],
            image_height=row["image_height"],
        )
        for position, vector, row in zip(which, vectors, held.to_pylist(), strict=True)
    }


def _stored_failures(old: pa.Table, failed: pa.BooleanArray) -> dict[int, PhotoFailure]:
    which = pc.indices_nonzero(failed).to_pylist()
    if not which:
        return {}
    held = old.filter(failed).select(["embedding_status", "photo_failures", "photo_failed_at"])
    return {
        position: PhotoFailure(
            row["embedding_status"].removeprefix(EmbeddingStatus.FAILED_PREFIX),
            row["photo_failures"] or 0,
            row["photo_failed_at"],
        )
        for position, row in zip(which, held.to_pylist(), strict=True)
    }


def changed_rows(rows: Sequence[SaleRow], stored: StoredRows, counts: RunCounts) -> list[SaleRow]:
    """The rows that differ from what the table holds (new sales included), counted into
    `counts` as written and the others as unchanged.

    Compared column by column with Arrow, not row by row: a re-run compares every sale of
    the day, and Python values of every stored cell cost more than the rest of the batch.
    """
    if not rows or not len(stored):
        same = [False] * len(rows)
    else:
        same = _same_as_stored(rows, stored).to_pylist()
    changed = [row for row, unchanged in zip(rows, same, strict=True) if not unchanged]
    counts.written += len(changed)
    counts.unchanged += len(rows) - len(changed)
    return changed


def _same_as_stored(rows: Sequence[SaleRow], stored: StoredRows) -> pa.BooleanArray:
    """Whether each row would be written as it is stored: the sale's fields, the status, the
    failure count and time, and which model made the embedding of which photo (the vector,
    from the same model and photo, is taken to be the same)."""
    positions = stored.positions([row.sale.key for row in rows])
    new = _compared_columns(rows)
    old = stored.aligned(positions, list(new))
    # A null count is no failure: rows are written with null, not 0, where there is none.
    old = old.set_column(
        old.column_names.index("photo_failures"),
        "photo_failures",
        pc.fill_null(old.column("photo_failures"), 0),
    )
    same = pc.is_valid(positions)
    for name, column in new.items():
        same = pc.and_(same, _same(column, old.column(name)))
    return same


def _compared_columns(rows: Sequence[SaleRow]) -> dict[str, pa.Array]:
    """The columns of `rows` that `_same_as_stored` compares, as the table would store them."""
    sales = [row.sale for row in rows]
    columns = {name: _sale_column(sales, name) for name in SALE_FIELDS}
    embeddings = [row.embedding for row in rows]
    values: dict[str, list[Any]] = {
        "embedding_status": [row.status for row in rows],
        "photo_failures": [row.failures for row in rows],
        "photo_failed_at": [row.failed_at for row in rows],
        "embedding_model": [e.model if e else None for e in embeddings],
        "image_sha256": [e.image_sha256 if e else None for e in embeddings],
    }
    columns.update(
        {
            name: pa.array(cells, type=ARROW_SCHEMA.field(name).type)
            for name, cells in values.items()
        }
    )
    return columns


def _sale_column(sales: Sequence[Sale], name: str) -> pa.Array:
    """A field of `sales` as the table's column: Decimals at its scale, times in UTC (Arrow
    raises ArrowInvalid for an amount it cannot hold, as writing the row would)."""
    return pa.array([getattr(sale, name) for sale in sales], type=ARROW_SCHEMA.field(name).type)


def _same(new: pa.Array, old: pa.ChunkedArray | pa.Array) -> pa.BooleanArray:
    """Cell by cell, whether the two hold the same value, two nulls being the same (as None
    is None): Arrow's own equality is null wherever either side is."""
    if old.type != new.type:
        old = old.cast(new.type)
    equal = pc.fill_null(pc.equal(new, old), False)
    return pc.or_(equal, pc.and_(pc.is_null(new), pc.is_null(old)))


def _is(column: pa.ChunkedArray | pa.Array, value: str) -> pa.BooleanArray:
    """Whether each cell is `value`; a null cell is not."""
    return pc.fill_null(pc.equal(column, value), False)


class RecentEmbeddings:
    """Embeddings made earlier in this export, by photo URL (and title, for a model that embeds
    titles too), so that a product sold again later in the run, with the same photo, needs
    neither the download nor the model again.

    Within one export a URL is taken to show one photo; the table's own reuse (`plan_batch`)
    is per sale, and does not cover a new sale of a product already embedded. Bounded: the
    least recently used are forgotten first, so memory stays flat however long the run.
    """

    def __init__(self, *, include_title: bool, capacity: int = 10_000) -> None:
        self._include_title = include_title
        self._capacity = capacity
        self._known: OrderedDict[tuple[str, str | None], Embedding] = OrderedDict()

    def get(self, sale: Sale) -> Embedding | None:
        key = self._key(sale)
        embedding = self._known.get(key) if key else None
        if key and embedding is not None:
            self._known.move_to_end(key)
        return embedding

    def remember(self, rows: Iterable[SaleRow]) -> None:
        for row in rows:
            key = self._key(row.sale)
            if key and row.embedding is not None:
                self._known[key] = row.embedding
                self._known.move_to_end(key)
        while len(self._known) > self._capacity:
            self._known.popitem(last=False)

    def _key(self, sale: Sale) -> tuple[str, str | None] | None:
        if not sale.fetch_url:
            return None
        return (sale.fetch_url, sale.title if self._include_title else None)
