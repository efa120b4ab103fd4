"""The demo store's products and sales, planned in memory from a seed.

Every product is a kind and colour of `demo.shops` with a brand, a condition and a price in
its store's currency; every sale one unit of it, sold on a day the store is open, in its
opening hours, sometimes marked down. A few rows are bad on purpose, because a demo of an
exporter should show how it reports them: broken photo links, sales without a photo, a missing
price, a currency typo, a refund. The same seed gives the same plan.

Apart from writing the database (`demo.store`) so that a later run can redraw missing photos
from the database's `demo_meta` without rebuilding it, and so that benchmarks plan products
of their own (`benchmarks/pricing_data.py`) with no database at all.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import random
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from smartgo_exporter.demo.shops import CONDITIONS, STORES, STYLES, DemoStore

DEFAULT_SEED = 20261
DEFAULT_SALES = 2_200

_WEEKDAY_TRADE = (0.8, 0.85, 0.9, 1.0, 1.25, 1.7, 1.0)
"""How busy each weekday is, Monday first: Saturdays sell twice what Mondays do."""

_PHOTO_FORMATS = ((".jpg", 70), (".png", 12), (".webp", 12), (".gif", 6))
_UNITS = ((1, 52), (2, 22), (3, 12), (4, 8), (6, 6))
"""How many units of a product a store sells: mostly one, as resale goes; sometimes a lot."""

_BROKEN_LINKS = 8
_SALES_WITHOUT_PHOTO = 10
_BLANK_PHOTO_URLS = 2
"""Of the sales without a photo, how many hold '' rather than NULL, as POS exports do."""
_FIRST_SALE_ID = 250_001


class PhotoState(enum.StrEnum):
    """What a product's photo_url holds: the kinds of photo link a real POS export contains."""

    OK = "ok"
    BROKEN = "broken"
    """The URL names a file the server does not have: it answers 404."""
    MISSING = "missing"
    """photo_url is NULL."""
    BLANK = "blank"
    """photo_url is the empty string."""


@dataclasses.dataclass(frozen=True, slots=True)
class DemoProduct:
    """An item a store sold one or more units of; every unit shares the sku and the photo."""

    sku: str
    store_id: str
    style: str
    """A key of STYLES: what the item is, and how its photo is drawn."""
    colour: str
    pattern: str
    """plain, stripes, dots or checks."""
    title: str
    brand: str
    category: str
    condition: str
    list_price: Decimal
    currency: str
    units: int
    photo: PhotoState
    photo_name: str | None
    """The file name in the photo URL; None when the product has no photo."""

    def photo_url(self, base_url: str) -> str | None:
        if self.photo is PhotoState.MISSING:
            return None
        if self.photo is PhotoState.BLANK:
            return ""
        return f"{base_url.rstrip('/')}/photos/{self.photo_name}"


@dataclasses.dataclass(frozen=True, slots=True)
class DemoSale:
    """One row of the `sales` table, before the photo base URL is known."""

    sale_id: int
    product: DemoProduct
    sold_at: datetime
    """Naive UTC, as the POS stores it."""
    price: Decimal | None
    currency: str
    till: str
    payment_method: str
    updated_at: datetime
    defect: str | None = None
    """Why the exporter must reject this row, for rows that are invalid on purpose."""


@dataclasses.dataclass(frozen=True, slots=True)
class DemoSummary:
    """The counts a demo prints, so a user can match them against the export's own report."""

    sales: int
    products: int
    tenants: int
    days: int
    photos: int
    broken_links: int
    sales_without_photo: int
    invalid_rows: int


@dataclasses.dataclass(frozen=True, slots=True)
class DemoCatalog:
    """What the demo store holds: enough to write its database and draw its photos."""

    first_day: date
    days: int
    seed: int
    stores: tuple[DemoStore, ...]
    products: tuple[DemoProduct, ...]
    sales: tuple[DemoSale, ...]

    @property
    def last_day(self) -> date:
        return self.first_day + timedelta(days=self.days - 1)

    @property
    def tenant_ids(self) -> tuple[str, ...]:
        return tuple(store.store_id for store in self.stores)

    @property
    def summary(self) -> DemoSummary:
        return DemoSummary(
            sales=len(self.sales),
            products=len(self.products),
            tenants=len(self.stores),
            days=self.days,
            photos=sum(p.photo is PhotoState.OK for p in self.products),
            broken_links=sum(p.photo is PhotoState.BROKEN for p in self.products),
            sales_without_photo=sum(
                s.product.photo in (PhotoState.MISSING, PhotoState.BLANK) for s in self.sales
            ),
            invalid_rows=sum(s.defect is not None for s in self.sales),
        )


def plan_demo(
    *, first_day: date, days: int = 30, sales: int = DEFAULT_SALES, seed: int = DEFAULT_SEED
) -> DemoCatalog:
    """The demo store's products and sales, in memory, from the seed alone.

    Kept apart from writing so a later run can redraw missing photos from the database's
    `demo_meta` without rebuilding it. `sales` is a floor: each store sells whole products, so
    the total ends a little above it.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    minimum = _BROKEN_LINKS + _SALES_WITHOUT_PHOTO + 3
    if sales < minimum * 2:
        raise ValueError(f"sales must be at least {minimum * 2}, not {sales}")
    rng = random.Random(f"smartgo-demo:{seed}")
    products: list[DemoProduct] = []
    for store in STORES:
        target = math.ceil(sales * store.share)
        skus = rng.sample(range(10_000, 1_000_000), k=target)
        sold = 0
        while sold < target:
            product = _plan_product(rng, store, f"{store.sku_prefix}-{skus.pop():06d}")
            products.append(product)
            sold += product.units
    products = _with_bad_photos(rng, products)

    rows: list[tuple[datetime, DemoProduct, DemoSale]] = []
    stores = {store.store_id: store for store in STORES}
    day_list = [first_day + timedelta(days=n) for n in range(days)]
    coverage_end = datetime.combine(first_day + timedelta(days=days), time())
    for product in products:
        store = stores[product.store_id]
        open_days = [d for d in day_list if store.hours[d.weekday()] is not None]
        weights = [_WEEKDAY_TRADE[d.weekday()] for d in open_days]
        for _ in range(product.units):
            day = rng.choices(open_days, weights)[0]
            sold_at = _moment_in_opening_hours(rng, store, day)
            progress = (day - first_day).days / days
            rows.append(
                (sold_at, product, _plan_sale(rng, product, sold_at, progress, coverage_end))
            )
    rows.sort(key=lambda row: (row[0], row[1].store_id, row[1].sku))
    planned = [
        dataclasses.replace(sale, sale_id=_FIRST_SALE_ID + n) for n, (_, _, sale) in enumerate(rows)
    ]
    return DemoCatalog(
        first_day=first_day,
        days=days,
        seed=seed,
        stores=STORES,
        products=tuple(products),
        sales=tuple(_with_invalid_rows(rng, planned)),
    )


def _weighted(rng: random.Random, options: Sequence[tuple[Any, int]]) -> Any:
    return rng.choices([o[0] for o in options], [o[1] for o in options])[0]


def _plan_product(
    rng: random.Random,
    store: DemoStore,
    sku: str,
    *,
    style_name: str | None = None,
    colour: str | None = None,
) -> DemoProduct:
    """A product of `style_name` and `colour` when given (an evaluation set plans look-alike
    families that way), else of a kind and colour drawn by how common they are."""
    if style_name is None:
        style_name = rng.choices(list(STYLES), [s.weight for s in STYLES.values()])[0]
    style = STYLES[style_name]
    if colour is None:
        colour = rng.choice(style.colours)
    pattern: str = _weighted(rng, style.patterns)
    brand, models, low, high = rng.choice(style.brands)
    condition, _, factor = rng.choices(CONDITIONS, [c[1] for c in CONDITIONS])[0]
    euros = rng.uniform(low, high) * factor
    whole = max(3, int(Decimal(repr(euros)) * store.euro_rate))
    list_price = Decimal(whole - 1) + Decimal(rng.choice(store.price_endings))
    list_price = max(list_price, Decimal("2.50"))
    adjective = {"plain": "", "stripes": "striped ", "dots": "polka-dot ", "checks": "checked "}
    model = f"{rng.choice(models)} " if models else ""
    noun = style.uk_noun if style.uk_noun and store.sizes == "uk" else style.noun
    size = _size(rng, style.sizing, store.sizes)
    title = f"{brand} {model}{colour} {adjective[pattern]}{noun}{', ' + size if size else ''}"
    extension: str = _weighted(rng, _PHOTO_FORMATS)
    return DemoProduct(
        sku=sku,
        store_id=store.store_id,
        style=style_name,
        colour=colour,
        pattern=pattern,
        title=title,
        brand=brand,
        category=style.category,
        condition=condition,
        list_price=list_price,
        currency=store.currency,
        units=_weighted(rng, _UNITS),
        photo=PhotoState.OK,
        photo_name=f"{sku.lower()}{extension}",
    )


def _size(rng: random.Random, sizing: str, system: str) -> str:
    if sizing == "clothes":
        return rng.choice(("XS", "S", "M", "M", "L", "L", "XL"))
    if sizing == "dress":
        return (
            f"UK {rng.choice(range(6, 20, 2))}"
            if system == "uk"
            else f"EU {rng.choice(range(34, 48, 2))}"
        )
    if sizing == "waist":
        return f"W{rng.choice(range(26, 38, 2))} L{rng.choice((30, 32, 34))}"
    if sizing == "shoes":
        return (
            f"UK {rng.choice(range(3, 12))}"
            if system == "uk"
            else f"EU {rng.choice(range(36, 47))}"
        )
    return ""


def _with_bad_photos(rng: random.Random, products: list[DemoProduct]) -> list[DemoProduct]:
    """Turn a few single-unit products into broken links and photo-less sales.

    Single-unit ones, so each defect is exactly one sale and the summary's counts are the
    numbers a user sees in the export's report.
    """
    singles = [n for n, p in enumerate(products) if p.units == 1]
    chosen = rng.sample(singles, _BROKEN_LINKS + _SALES_WITHOUT_PHOTO)
    for rank, index in enumerate(chosen):
        product = products[index]
        if rank < _BROKEN_LINKS:
            # A name no rendered photo ever has, so a stale file cannot answer for it.
            stem, extension = os.path.splitext(product.photo_name or ".jpg")
            products[index] = dataclasses.replace(
                product, photo=PhotoState.BROKEN, photo_name=f"{stem}-v2{extension}"
            )
        else:
            blank = rank < _BROKEN_LINKS + _BLANK_PHOTO_URLS
            products[index] = dataclasses.replace(
                product, photo=PhotoState.BLANK if blank else PhotoState.MISSING, photo_name=None
            )
    return products


def _moment_in_opening_hours(rng: random.Random, store: DemoStore, day: date) -> datetime:
    hours = store.hours[day.weekday()]
    assert hours is not None
    opening, closing = hours
    # Afternoons are busier than mornings.
    seconds = int((closing - opening) * 3600 * rng.betavariate(2.2, 1.7))
    local = datetime.combine(day, time(opening), tzinfo=ZoneInfo(store.timezone))
    return (local + timedelta(seconds=seconds)).astimezone(UTC).replace(tzinfo=None)


def _plan_sale(
    rng: random.Random,
    product: DemoProduct,
    sold_at: datetime,
    progress: float,
    coverage_end: datetime,
) -> DemoSale:
    # Markdowns grow more likely as the month goes on; a few sales carry a staff discount.
    discounts = (
        (Decimal("1.00"), 70 - int(25 * progress)),
        (Decimal("0.90"), 8),
        (Decimal("0.80"), 8 + int(10 * progress)),
        (Decimal("0.70"), 4 + int(10 * progress)),
        (Decimal("0.50"), 2 + int(5 * progress)),
        (Decimal("0.85"), 3),
    )
    factor: Decimal = _weighted(rng, discounts)
    price = (product.list_price * factor).quantize(Decimal("0.01"), ROUND_HALF_UP)
    updated_at = sold_at + timedelta(seconds=rng.randint(0, 90))
    if rng.random() < 0.03:
        # A receipt corrected later: the row changes after the day it belongs to.
        later = sold_at + timedelta(hours=rng.randint(1, 72))
        updated_at = max(sold_at, min(later, coverage_end - timedelta(seconds=1)))
    return DemoSale(
        sale_id=0,
        product=product,
        sold_at=sold_at,
        price=price,
        currency=product.currency,
        till=rng.choice(("T1", "T1", "T2")),
        payment_method=rng.choices(("card", "cash", "gift card"), (80, 17, 3))[0],
        updated_at=updated_at,
    )


def _with_invalid_rows(rng: random.Random, sales: list[DemoSale]) -> list[DemoSale]:
    """Spoil three rows the way POS data goes wrong: a missing price, a typo, a refund."""
    usable = [
        n for n, s in enumerate(sales) if s.product.units == 1 and s.product.photo is PhotoState.OK
    ]
    picks = rng.sample(usable, 3)
    euro = next(n for n in usable if sales[n].currency == "EUR" and n not in picks)
    picks[1] = euro
    null_price, typo, refund = picks
    sales[null_price] = dataclasses.replace(
        sales[null_price], price=None, defect="sale_price missing"
    )
    sales[typo] = dataclasses.replace(
        sales[typo], currency="EUU", defect="currency EUU is not an ISO 4217 code"
    )
    refund_sale = sales[refund]
    sales[refund] = dataclasses.replace(
        refund_sale, price=-(refund_sale.price or Decimal(1)), defect="sale_price negative"
    )
    return sales
