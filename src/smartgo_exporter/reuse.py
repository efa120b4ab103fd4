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

from smartgo_exporter.photo_retries import RetryPolicy, kept_row, stored_failure
from smartgo_exporter.run_records import RunCounts
from smartgo_exporter.sales import SALE_FIELDS, Sale
from smartgo_exporter.schema import Embedding, EmbeddingStatus, SaleRow, StoredRows


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
    plan = BatchPlan()
    for sale in sales:
        if sale.image_url is None:
            plan.settled.append(SaleRow(sale, EmbeddingStatus.NO_IMAGE))
            counts.no_image += 1
            continue
        embedding = _stored_embedding(sale, stored, model_id, include_title)
        if embedding is not None:
            plan.settled.append(SaleRow(sale, EmbeddingStatus.OK, embedding))
            counts.reused += 1
            continue
        failure = stored_failure(stored, sale)
        if failure is not None and not retries.due(failure, now):
            plan.settled.append(kept_row(sale, failure))
            counts.deferred += 1
        else:
            plan.to_fetch.append(sale)
    return plan


def _stored_embedding(
    sale: Sale, stored: StoredRows, model_id: str, include_title: bool
) -> Embedding | None:
    if sale.key not in stored:
        return None
    row = stored.row(sale.key)
    if (
        row["embedding_status"] != EmbeddingStatus.OK
        or row["embedding_model"] != model_id
        or row["image_url"] != sale.image_url
        or (include_title and row["title"] != sale.title)
    ):
        return None
    vector = stored.vector(sale.key)
    if vector is None:
        return None
    return Embedding(
        vector=vector,
        model=row["embedding_model"],
        image_sha256=row["image_sha256"],
        image_width=row["image_width"],
        image_height=row["image_height"],
    )


def changed_rows(rows: Sequence[SaleRow], stored: StoredRows, counts: RunCounts) -> list[SaleRow]:
    """The rows that differ from what the table holds (new sales included), counted into
    `counts` as written and the others as unchanged."""
    changed = [row for row in rows if not _same_as_stored(row, stored)]
    counts.written += len(changed)
    counts.unchanged += len(rows) - len(changed)
    return changed


def _same_as_stored(row: SaleRow, stored: StoredRows) -> bool:
    if row.sale.key not in stored:
        return False
    current = stored.row(row.sale.key)
    if any(getattr(row.sale, name) != current[name] for name in SALE_FIELDS):
        return False
    if row.status != current["embedding_status"]:
        return False
    # .get: a table not yet given the failure columns reads as one whose rows have none.
    if row.failures != (current.get("photo_failures") or 0) or row.failed_at != current.get(
        "photo_failed_at"
    ):
        return False
    embedding = row.embedding
    model = embedding.model if embedding else None
    sha256 = embedding.image_sha256 if embedding else None
    return bool(model == current["embedding_model"] and sha256 == current["image_sha256"])


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
