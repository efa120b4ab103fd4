"""What the table is for: the sold items most like a new one, and the price they suggest.

`Lookup` holds the configured embedder and each tenant's index, so a service (the Lambda
handler, a notebook) pays for loading them once; `similar` and `suggest_price` are the
one-call forms the CLI uses:

    from smartgo_exporter import load_config
    from smartgo_exporter.lookup import similar, suggest_price

    settings = load_config("smartgo-exporter.toml")
    photo = open("new-boots.jpg", "rb").read()
    for match in similar(settings, photo, tenant="ams-jordaan", k=5):
        print(match.sale_id, match.title, match.sale_price, f"{match.similarity:.2f}")
    suggestion = suggest_price(settings, photo, brand="Dr. Martens", condition="good")

The photo is embedded by the configured embedder, and each index is brought to the table's
current snapshot before it is searched, so a sale that has left the table is never returned.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from smartgo_exporter.config import PhotoConfig, Settings
from smartgo_exporter.embedders import Embedder, Vector, load_embedder
from smartgo_exporter.errors import (
    EmbeddingError,
    IndexMismatch,
    NoSalesInCurrency,
    PhotoError,
    PhotoUnreadable,
    UnknownTenant,
)
from smartgo_exporter.index import Neighbour, SalesIndex, SyncReport, sync_indexes
from smartgo_exporter.index_table import table_models, table_tenants
from smartgo_exporter.pricing import (
    DEFAULT_RULES,
    PriceLevels,
    PriceSuggestion,
    PricingRules,
    suggest,
)
from smartgo_exporter.sinks.iceberg import load_table


@dataclasses.dataclass(frozen=True, slots=True)
class Match:
    """A sold item like the one looked up; `similarity` is the cosine of their embeddings."""

    tenant_id: str
    sale_id: str
    product_id: str
    title: str | None
    brand: str | None
    category: str | None
    condition: str | None
    sale_price: Decimal
    currency: str
    sold_at: datetime
    image_url: str | None
    similarity: float

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: money as a string, so no cent is lost to a float."""
        shown = dataclasses.asdict(self)
        shown["sale_price"] = str(self.sale_price)
        shown["sold_at"] = self.sold_at.isoformat()
        return shown


class Lookup:
    """Similar sales and price suggestions over one table, for one embedding model.

    `embedder` overrides the configured one (a test's, or one already loaded), as `export`
    takes its stages. Raises LookupFailed subclasses for input it cannot answer (a photo that
    cannot be decoded, an unknown tenant) and SinkError when the table cannot be read.
    """

    def __init__(self, settings: Settings, *, embedder: Embedder | None = None) -> None:
        self._settings = settings
        self._embedder = embedder if embedder is not None else load_embedder(settings.embedder)
        self._table = load_table(settings.table)
        self._indexes: dict[str, SalesIndex] = {}
        self._levels: dict[str, tuple[int | None, PriceLevels]] = {}
        self._tenants: tuple[int | None, list[str]] | None = None

    @property
    def model(self) -> str:
        """The model photos are embedded by, and so the one of the sales they are compared with."""
        return self._embedder.model_id

    @property
    def dim(self) -> int:
        return self._embedder.dim

    def embed(self, photo: bytes, *, title: str | None = None, location: str = "photo") -> Vector:
        """The photo's vector; PhotoUnreadable naming `location` when it cannot be embedded."""
        [vector] = self._embedder.embed([photo], captions=[title])
        if isinstance(vector, EmbeddingError):
            raise PhotoUnreadable(location, str(vector))
        return vector

    def similar(
        self,
        photo: bytes,
        *,
        title: str | None = None,
        tenant: str | None = None,
        k: int = 10,
        location: str = "photo",
    ) -> list[Match]:
        """The `k` sold items most like the photo, most alike first, of one tenant or of all."""
        vector = self.embed(photo, title=title, location=location)
        nearest = _nearest(self.indexes(tenant), vector, k)
        return [_match(index.tenant, n.sale, n.similarity) for index, n in nearest]

    def suggest_price(
        self,
        photo: bytes,
        *,
        title: str | None = None,
        brand: str | None = None,
        condition: str | None = None,
        currency: str | None = None,
        tenant: str | None = None,
        location: str = "photo",
        rules: PricingRules = DEFAULT_RULES,
    ) -> PriceSuggestion:
        """A price for the item in the photo from its most alike sales (see `pricing`).

        A brand the title names is used when `brand` is not given. Without a tenant, the
        sales of every tenant are compared, with the price levels of all of them.
        """
        vector = self.embed(photo, title=title, location=location)
        return self.suggest_for_vector(
            vector,
            title=title,
            brand=brand,
            condition=condition,
            currency=currency,
            tenant=tenant,
            rules=rules,
        )

    def suggest_for_vector(
        self,
        vector: NDArray[np.float32],
        *,
        title: str | None = None,
        brand: str | None = None,
        condition: str | None = None,
        currency: str | None = None,
        tenant: str | None = None,
        exclude_products: Sequence[str] = (),
        rules: PricingRules = DEFAULT_RULES,
    ) -> PriceSuggestion:
        """`suggest_price` for a vector already embedded (the benchmark's queries).

        `exclude_products` leaves those products' own sales out of the comparables.
        """
        indexes = self.indexes(tenant)
        levels = self._price_levels(tenant, indexes)
        if currency is not None and currency not in levels.currencies:
            raise NoSalesInCurrency(currency, tenant)
        nearest = _nearest(indexes, vector, rules.neighbours, exclude_products)
        return suggest(
            [(n.sale, n.similarity) for _, n in nearest],
            levels,
            brand=brand if brand is not None else levels.brand_in(title),
            condition=condition,
            currency=currency,
            rules=rules,
        )

    def _price_levels(self, tenant: str | None, indexes: Sequence[SalesIndex]) -> PriceLevels:
        """The price levels (and currencies) of the indexed sales, kept per snapshot: a lookup
        then costs no pass over the sales."""
        snapshot = indexes[0].snapshot_id if indexes else None
        cached = self._levels.get(tenant or "")
        if cached is None or cached[0] != snapshot:
            sales = pa.concat_tables([index.sales for index in indexes]) if indexes else None
            levels = PriceLevels.from_sales(sales) if sales is not None else PriceLevels({}, {})
            cached = self._levels[tenant or ""] = (snapshot, levels)
        return cached[1]

    def indexes(self, tenant: str | None) -> list[SalesIndex]:
        """The indexes to search, each brought to the table's current snapshot.

        UnknownTenant when the tenant has no sales; IndexMismatch when the table has sales but
        none embedded by this model, so that a search never quietly compares across models.
        """
        self._table.refresh()
        snapshot = self._table.current_snapshot()
        snapshot_id = snapshot.snapshot_id if snapshot is not None else None
        if self._tenants is None or self._tenants[0] != snapshot_id:
            self._tenants = (snapshot_id, table_tenants(self._table))
        known = self._tenants[1]
        if tenant is not None and tenant not in known:
            raise UnknownTenant(tenant, known)
        indexes = []
        for name in [tenant] if tenant is not None else known:
            index = self._indexes.get(name)
            if index is None:
                index = self._indexes[name] = SalesIndex.load(
                    self._settings.index,
                    self._settings.table,
                    name,
                    self._embedder.model_id,
                    self._embedder.dim,
                )
            index.sync(self._table, refresh=False)
            indexes.append(index)
        if known and not any(len(index) for index in indexes):
            models = table_models(self._table, tenant)
            if models:
                raise IndexMismatch(
                    f"of tenant {tenant!r}" if tenant is not None else "of every tenant",
                    f"the table's sales are embedded by {', '.join(models)}, not by the "
                    f"configured {self.model}; export the days again (`backfill`) to embed "
                    "them with it, or configure the model they were embedded with",
                )
        return indexes


def _nearest(
    indexes: Sequence[SalesIndex],
    vector: NDArray[np.float32],
    k: int,
    exclude_products: Sequence[str] = (),
) -> list[tuple[SalesIndex, Neighbour]]:
    """The `k` nearest sales over several tenants' indexes, most alike first."""
    found = [
        (index, neighbour)
        for index in indexes
        for neighbour in index.search(vector, k, exclude_products=exclude_products)
    ]
    found.sort(key=lambda pair: -pair[1].similarity)
    return found[:k]


def similar(
    settings: Settings,
    photo: bytes,
    *,
    title: str | None = None,
    tenant: str | None = None,
    k: int = 10,
    location: str = "photo",
) -> list[Match]:
    """`Lookup(settings).similar(...)`, for a single question."""
    return Lookup(settings).similar(photo, title=title, tenant=tenant, k=k, location=location)


def suggest_price(
    settings: Settings,
    photo: bytes,
    *,
    title: str | None = None,
    brand: str | None = None,
    condition: str | None = None,
    currency: str | None = None,
    tenant: str | None = None,
    location: str = "photo",
) -> PriceSuggestion:
    """`Lookup(settings).suggest_price(...)`, for a single question."""
    return Lookup(settings).suggest_price(
        photo,
        title=title,
        brand=brand,
        condition=condition,
        currency=currency,
        tenant=tenant,
        location=location,
    )


def update_indexes(
    settings: Settings, *, tenants: Sequence[str] | None = None, rebuild: bool = False
) -> list[SyncReport]:
    """Bring each tenant's stored index up to date with the table (what `index` runs)."""
    embedder = load_embedder(settings.embedder)
    table = load_table(settings.table)
    return sync_indexes(
        settings.index,
        settings.table,
        table,
        embedder.model_id,
        embedder.dim,
        tenants=tenants,
        rebuild=rebuild,
    )


def read_photo(location: str, photos: PhotoConfig) -> bytes:
    """The bytes of a photo given as a path or an http(s) URL, fetched like an export's photos
    (the same address guard, size limit and timeouts); PhotoUnreadable when it cannot be."""
    if location.startswith(("http://", "https://")):
        from smartgo_exporter.photo_fetcher import PhotoFetcher

        async def fetch() -> bytes:
            async with PhotoFetcher(photos) as fetcher:
                return (await fetcher.fetch(location)).data

        try:
            return asyncio.run(fetch())
        except PhotoError as error:
            detail = f" ({error.detail})" if error.detail else ""
            raise PhotoUnreadable(location, error.reason + detail) from None
    try:
        return Path(location).read_bytes()
    except OSError as error:
        raise PhotoUnreadable(location, error.strerror or str(error)) from None


def _match(tenant: str, sale: dict[str, Any], similarity: float) -> Match:
    fields = {field.name for field in dataclasses.fields(Match)} - {"tenant_id", "similarity"}
    return Match(tenant_id=tenant, similarity=similarity, **{name: sale[name] for name in fields})


__all__ = [
    "Lookup",
    "Match",
    "PriceSuggestion",
    "read_photo",
    "similar",
    "suggest_price",
    "update_indexes",
]
