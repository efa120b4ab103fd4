"""What happens to one batch of sales, whichever runner drives it.

The local pipeline (`pipeline.py`) and the Ray backfill runner move batches differently (an
event loop and three threads on one machine; tasks and an actor pool on a cluster), but a batch
must come out the same either way: the same sales kept, the same photo failures recorded with
the same reasons, each distinct photo embedded once, and the same rows committed. These are
those steps; each takes what it needs and returns what it found, and the runner records it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import pyarrow as pa
import structlog

from smartgo_exporter.embedders import Embedder
from smartgo_exporter.errors import EmbeddingError, PhotoError
from smartgo_exporter.photo_fetcher import Photo
from smartgo_exporter.run_records import RunCounts, RunError
from smartgo_exporter.sales import Key, Sale, public_url
from smartgo_exporter.schema import Embedding, EmbeddingStatus, SaleRow
from smartgo_exporter.sources import SaleBatch

log = structlog.get_logger(__name__)


def select_sales(
    batch: SaleBatch, tenant_ids: Sequence[str]
) -> tuple[list[Sale], RunCounts, list[RunError]]:
    """The batch's valid sales, one per key (the source's later row wins), of the configured
    tenants only; with the batch's counts so far and the errors to record (rejected rows,
    duplicate sale ids)."""
    counts = RunCounts(sales=len(batch.sales) + len(batch.rejected), rejected=len(batch.rejected))
    errors = [
        RunError(invalid.row, "source", invalid.field, invalid.reason) for invalid in batch.rejected
    ]
    allowed = set(tenant_ids)
    by_key: dict[Key, Sale] = {}
    for sale in batch.sales:
        if allowed and sale.tenant_id not in allowed:
            log.warning("foreign_tenant_dropped", tenant_id=sale.tenant_id, sale_id=sale.sale_id)
            continue
        if sale.key in by_key:
            errors.append(
                RunError(sale.sale_id, "source", "duplicate_sale_id", "the later row was kept")
            )
        by_key[sale.key] = sale
    return list(by_key.values()), counts, errors


def sold_within(sales: Sequence[Sale]) -> tuple[datetime, datetime] | None:
    """The first and last `sold_at` of the sales: where the table keeps their stored rows."""
    if not sales:
        return None
    times = [sale.sold_at for sale in sales]
    return min(times), max(times)


def sort_photos(
    to_fetch: Sequence[Sale], photos: Mapping[str, Photo | PhotoError], counts: RunCounts
) -> tuple[list[tuple[Sale, Photo]], list[SaleRow], list[RunError]]:
    """Pair each sale with its fetched photo; a sale whose photo failed becomes a row with
    `failed:<reason>` and an error naming its URL as the table keeps it (`public_url`)."""
    fetched: list[tuple[Sale, Photo]] = []
    failed: list[SaleRow] = []
    errors: list[RunError] = []
    for sale in to_fetch:
        photo = photos[str(sale.fetch_url)]
        if isinstance(photo, PhotoError):
            failed.append(SaleRow(sale, EmbeddingStatus.failed(photo.reason)))
            errors.append(RunError(sale.sale_id, "photo", photo.reason, _described(photo)))
            counts.failed += 1
        else:
            fetched.append((sale, photo))
    return fetched, failed, errors


def embed_photos(
    embedder: Embedder, fetched: Sequence[tuple[Sale, Photo]], counts: RunCounts
) -> tuple[list[SaleRow], list[RunError]]:
    """Embed each distinct photo once (several sales of one product share it), and return a
    row per sale with the errors of those the model refused.

    It returns its errors rather than recording them, since it runs off the thread (or the
    process) that owns the run record.
    """

    def key(sale: Sale, photo: Photo) -> tuple[str, str | None]:
        # A model that embeds titles too sees one photo with two titles as two inputs.
        return (photo.sha256, sale.title if embedder.include_title else None)

    distinct: dict[tuple[str, str | None], Photo] = {}
    for sale, photo in fetched:
        distinct.setdefault(key(sale, photo), photo)
    inputs = list(distinct)
    outputs = embedder.embed(
        [distinct[k].data for k in inputs], captions=[title for _, title in inputs]
    )
    vectors = dict(zip(inputs, outputs, strict=True))
    rows: list[SaleRow] = []
    errors: list[RunError] = []
    for sale, photo in fetched:
        vector = vectors[key(sale, photo)]
        if isinstance(vector, EmbeddingError):
            reason = f"embedding_{vector.reason}"
            rows.append(SaleRow(sale, EmbeddingStatus.failed(reason)))
            errors.append(RunError(sale.sale_id, "embedding", reason, vector.detail))
            counts.failed += 1
            continue
        embedding = Embedding(vector, embedder.model_id, photo.sha256, photo.width, photo.height)
        rows.append(SaleRow(sale, EmbeddingStatus.OK, embedding))
        counts.embedded += 1
    return rows, errors


def last_per_key(batches: Sequence[pa.Table]) -> pa.Table:
    """The batches as one table holding each (source, tenant_id, sale_id) once, its latest row.

    Batches gathered into one commit may repeat a key (a source that returns a sale twice, in
    rows far apart); an upsert given both rows would store both.
    """
    rows = pa.concat_tables(batches) if len(batches) > 1 else batches[0]
    if len(batches) == 1:
        return rows
    keys = list(
        zip(
            rows.column("source").to_pylist(),
            rows.column("tenant_id").to_pylist(),
            rows.column("sale_id").to_pylist(),
            strict=True,
        )
    )
    latest = {key: position for position, key in enumerate(keys)}
    if len(latest) == rows.num_rows:
        return rows
    return rows.take(sorted(latest.values()))


def _described(error: PhotoError) -> str:
    """The error for the run record, its URL in the form the table keeps (`public_url`)."""
    return f"{public_url(error.url)}: {error.reason}" + (
        f" ({error.detail})" if error.detail else ""
    )
