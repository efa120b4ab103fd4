"""The demo store: its shops, products and sales, planned from a seed, and its SQLite database.

The database is a SmartGo point-of-sale database as a user would meet it: column names are the
POS's own (so the config's column mapping is exercised), money is decimal text, and a few rows
are bad on purpose, because a demo of an exporter should show how it reports them. The same
seed gives the same rows, so a demo run twice is the same store twice."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import random
import sqlite3
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

DEFAULT_SEED = 20261
DEFAULT_SALES = 2_200
SALES_TABLE = "sales"
SALE_COLUMNS = {
    "sale_id": "id",
    "tenant_id": "store_id",
    "product_id": "sku",
    "sold_at": "sold_at",
    "sale_price": "price",
    "list_price": "list_price",
    "currency": "currency",
    "title": "title",
    "brand": "brand",
    "category": "category",
    "condition": "item_condition",
    "image_url": "photo_url",
    "source_updated_at": "updated_at",
}
"""Sale field -> column of the demo's `sales` table: what the written config maps."""


@dataclasses.dataclass(frozen=True, slots=True)
class DemoStore:
    """One tenant: a shop with its own currency, time zone and opening hours."""

    store_id: str
    name: str
    city: str
    currency: str
    timezone: str
    sku_prefix: str
    share: float
    """Its part of all sales: stores differ in size, as real ones do."""
    hours: tuple[tuple[int, int] | None, ...]
    """(opening hour, closing hour) in local time, Monday first; None when closed all day."""
    price_endings: tuple[str, ...]
    euro_rate: Decimal
    """Local price of one euro's worth of goods."""
    sizes: str
    """"uk" or "eu": how sizes are written in titles."""


STORES = (
    DemoStore(
        store_id="ldn-camden",
        name="SmartGo Resale Camden",
        city="London",
        currency="GBP",
        timezone="Europe/London",
        sku_prefix="LDN",
        share=0.40,
        hours=((10, 19),) * 6 + ((11, 17),),
        price_endings=("0.00", "0.50", "0.99"),
        euro_rate=Decimal("0.86"),
        sizes="uk",
    ),
    DemoStore(
        store_id="ber-mitte",
        name="SmartGo Resale Mitte",
        city="Berlin",
        currency="EUR",
        timezone="Europe/Berlin",
        sku_prefix="BER",
        share=0.33,
        hours=((10, 20),) * 6 + (None,),
        price_endings=("0.00", "0.50", "0.90"),
        euro_rate=Decimal(1),
        sizes="eu",
    ),
    DemoStore(
        store_id="ams-jordaan",
        name="SmartGo Resale Jordaan",
        city="Amsterdam",
        currency="EUR",
        timezone="Europe/Amsterdam",
        sku_prefix="AMS",
        share=0.27,
        hours=((12, 18),) + ((10, 18),) * 5 + ((12, 17),),
        price_endings=("0.00", "0.50", "0.90"),
        euro_rate=Decimal(1),
        sizes="eu",
    ),
)

_WEEKDAY_TRADE = (0.8, 0.85, 0.9, 1.0, 1.25, 1.7, 1.0)
"""How busy each weekday is, Monday first: Saturdays sell twice what Mondays do."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Style:
    category: str
    noun: str
    weight: int
    """How common the kind is among a store's products."""
    colours: tuple[str, ...]
    brands: tuple[tuple[str, tuple[str, ...], int, int], ...]
    """(brand, models, lowest and highest euro price in like-new condition)."""
    patterns: tuple[tuple[str, int], ...] = (("plain", 1),)
    sizing: str = ""
    """clothes, dress, waist, shoes, or empty for one size."""
    uk_noun: str = ""
    """What a London store calls it, when that differs."""


STYLES: dict[str, _Style] = {
    "t-shirt": _Style(
        category="Tops",
        noun="T-shirt",
        weight=13,
        colours=("white", "black", "navy", "grey", "red", "sky blue", "olive", "pink", "mustard"),
        brands=(
            ("Uniqlo", (), 8, 15),
            ("COS", (), 15, 28),
            ("Ralph Lauren", (), 20, 40),
            ("Carhartt WIP", (), 15, 30),
            ("Lacoste", (), 20, 38),
            ("H&M", (), 5, 10),
        ),
        patterns=(("plain", 55), ("stripes", 30), ("dots", 5), ("checks", 5)),
        sizing="clothes",
    ),
    "shirt": _Style(
        category="Tops",
        noun="shirt",
        weight=9,
        colours=("white", "sky blue", "navy", "pink", "red", "cream", "olive"),
        brands=(
            ("Uniqlo", (), 10, 18),
            ("Ralph Lauren", ("Oxford",), 25, 50),
            ("Tommy Hilfiger", (), 20, 40),
            ("COS", (), 18, 35),
            ("Gant", (), 20, 42),
        ),
        patterns=(("plain", 50), ("stripes", 20), ("checks", 30)),
        sizing="clothes",
    ),
    "dress": _Style(
        category="Dresses",
        noun="midi dress",
        weight=12,
        colours=("black", "navy", "red", "burgundy", "pink", "green", "mustard", "cream"),
        brands=(
            ("Zara", (), 12, 25),
            ("Mango", (), 12, 28),
            ("& Other Stories", (), 20, 45),
            ("Ganni", (), 45, 120),
            ("Reformation", (), 50, 130),
            ("H&M", (), 8, 16),
        ),
        patterns=(("plain", 50), ("dots", 25), ("stripes", 10), ("checks", 15)),
        sizing="dress",
    ),
    "jeans": _Style(
        category="Trousers",
        noun="jeans",
        weight=10,
        colours=("indigo", "light denim", "black", "grey"),
        brands=(
            ("Levi's", ("501", "511", "505"), 25, 55),
            ("Wrangler", (), 18, 35),
            ("Lee", (), 18, 35),
            ("Weekday", (), 15, 30),
            ("Acne Studios", (), 60, 140),
        ),
        sizing="waist",
    ),
    "chinos": _Style(
        category="Trousers",
        noun="chinos",
        weight=4,
        colours=("beige", "navy", "olive", "black", "camel"),
        brands=(
            ("Dockers", (), 15, 30),
            ("Uniqlo", (), 10, 20),
            ("Carhartt WIP", ("Sid",), 25, 50),
            ("COS", (), 20, 38),
        ),
        sizing="waist",
    ),
    "jacket": _Style(
        category="Outerwear",
        noun="jacket",
        weight=12,
        colours=("black", "navy", "olive", "camel", "brown", "red", "grey"),
        brands=(
            ("Barbour", ("Bedale", "Beaufort"), 60, 150),
            ("Patagonia", ("Retro-X",), 45, 110),
            ("The North Face", ("Nuptse",), 50, 140),
            ("Levi's", ("Trucker",), 30, 60),
            ("Carhartt WIP", ("Detroit",), 40, 90),
            ("Zara", (), 15, 35),
        ),
        patterns=(("plain", 88), ("checks", 12)),
        sizing="clothes",
    ),
    "sneakers": _Style(
        category="Shoes",
        noun="sneakers",
        uk_noun="trainers",
        weight=10,
        colours=("white", "black", "grey", "navy", "red", "green"),
        brands=(
            ("Nike", ("Air Force 1", "Air Max 90"), 30, 80),
            ("Adidas", ("Samba", "Stan Smith", "Gazelle"), 30, 70),
            ("New Balance", ("574", "550"), 35, 75),
            ("Converse", ("Chuck Taylor",), 15, 35),
            ("Vans", ("Old Skool",), 15, 35),
            ("Veja", ("V-10",), 40, 80),
        ),
        sizing="shoes",
    ),
    "boots": _Style(
        category="Shoes",
        noun="Chelsea boots",
        weight=6,
        colours=("black", "brown", "tan"),
        brands=(
            ("Dr. Martens", ("2976",), 45, 95),
            ("Blundstone", ("500",), 50, 110),
            ("Clarks", (), 30, 70),
            ("R.M. Williams", ("Comfort Craftsman",), 120, 260),
        ),
        sizing="shoes",
    ),
    "handbag": _Style(
        category="Bags",
        noun="leather handbag",
        weight=6,
        colours=("black", "tan", "brown", "burgundy", "cream", "camel"),
        brands=(
            ("Michael Kors", (), 40, 110),
            ("Coach", (), 50, 140),
            ("Kate Spade", (), 40, 100),
            ("Mulberry", ("Bayswater",), 180, 450),
            ("Furla", (), 50, 130),
        ),
        patterns=(("plain", 90), ("checks", 10)),
    ),
    "tote": _Style(
        category="Bags",
        noun="tote bag",
        weight=4,
        colours=("cream", "navy", "black", "olive", "red"),
        brands=(
            ("Longchamp", ("Le Pliage",), 35, 80),
            ("COS", (), 15, 35),
            ("Marimekko", (), 20, 45),
            ("Herschel", (), 15, 35),
        ),
        patterns=(("plain", 70), ("stripes", 30)),
    ),
    "crossbody": _Style(
        category="Bags",
        noun="crossbody bag",
        weight=3,
        colours=("black", "tan", "brown", "pink"),
        brands=(
            ("Coach", (), 45, 120),
            ("Fossil", (), 25, 60),
            ("Marc Jacobs", ("Snapshot",), 80, 200),
            ("Michael Kors", (), 35, 90),
        ),
    ),
    "fedora": _Style(
        category="Hats",
        noun="felt fedora",
        weight=3,
        colours=("black", "brown", "camel", "grey", "navy"),
        brands=(
            ("Brixton", (), 20, 45),
            ("Christys' London", (), 40, 90),
            ("Borsalino", (), 90, 220),
        ),
    ),
    "beanie": _Style(
        category="Hats",
        noun="beanie",
        weight=3,
        colours=("black", "grey", "navy", "mustard", "red", "olive", "cream"),
        brands=(
            ("Carhartt WIP", (), 8, 18),
            ("Acne Studios", (), 40, 90),
            ("Patagonia", (), 12, 25),
            ("Uniqlo", (), 4, 9),
        ),
        patterns=(("plain", 70), ("stripes", 30)),
    ),
    "watch": _Style(
        category="Watches",
        noun="watch",
        weight=4,
        colours=("black", "brown", "tan", "silver", "navy"),
        brands=(
            ("Casio", ("MTP-V002",), 15, 35),
            ("Seiko", ("5 Sports",), 70, 180),
            ("Fossil", ("Grant",), 35, 80),
            ("Swatch", (), 20, 45),
            ("Tissot", ("PRX",), 120, 300),
            ("Daniel Wellington", ("Classic",), 25, 60),
        ),
    ),
    "sunglasses": _Style(
        category="Accessories",
        noun="sunglasses",
        weight=4,
        colours=("black", "tortoise", "gold", "silver"),
        brands=(
            ("Ray-Ban", ("Wayfarer", "Clubmaster"), 40, 90),
            ("Oakley", ("Frogskins",), 35, 80),
            ("Persol", ("714",), 70, 150),
            ("Le Specs", (), 15, 35),
        ),
    ),
}
"""Every kind of item the demo stores sell; each key is also how its photo is drawn."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (242, 241, 236),
    "cream": (234, 224, 198),
    "beige": (212, 194, 160),
    "black": (34, 34, 38),
    "grey": (128, 130, 136),
    "silver": (190, 192, 198),
    "navy": (30, 42, 84),
    "indigo": (46, 64, 110),
    "light denim": (118, 148, 190),
    "sky blue": (132, 182, 226),
    "red": (190, 34, 42),
    "burgundy": (112, 26, 42),
    "pink": (232, 152, 172),
    "mustard": (214, 168, 42),
    "olive": (108, 112, 52),
    "green": (36, 110, 62),
    "tan": (196, 148, 98),
    "camel": (192, 152, 104),
    "brown": (108, 68, 40),
    "tortoise": (118, 74, 38),
    "gold": (212, 174, 60),
}

_CONDITIONS = (
    ("New with tags", 10, 1.0),
    ("Like new", 25, 0.85),
    ("Very good", 35, 0.7),
    ("Good", 22, 0.55),
    ("Fair", 8, 0.4),
)
"""(label, how often, price factor): condition is most of a resale price."""

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
    condition, _, factor = rng.choices(_CONDITIONS, [c[1] for c in _CONDITIONS])[0]
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


SCHEMA = """
CREATE TABLE stores (
    store_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    city TEXT NOT NULL,
    currency TEXT NOT NULL,
    timezone TEXT NOT NULL
);
CREATE TABLE sales (
    id INTEGER PRIMARY KEY,
    store_id TEXT NOT NULL REFERENCES stores (store_id),
    till TEXT NOT NULL,
    sku TEXT NOT NULL,
    sold_at TEXT NOT NULL,          -- 'YYYY-MM-DD HH:MM:SS', naive UTC
    price TEXT,                     -- decimal text such as '24.50': money is never a float
    list_price TEXT,
    currency TEXT NOT NULL,
    title TEXT,
    brand TEXT,
    category TEXT,
    item_condition TEXT,
    photo_url TEXT,
    payment_method TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX sales_by_sold_at ON sales (sold_at);
CREATE INDEX sales_by_store_sku ON sales (store_id, sku);
CREATE TABLE demo_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
"""The demo POS database's tables: stores, sales (with the POS's own column names) and demo_meta;
benchmarks build their stores from it too."""

INSERT_SALE = """
INSERT INTO sales (
    id, store_id, till, sku, sold_at, price, list_price, currency, title, brand, category,
    item_condition, photo_url, payment_method, updated_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


@dataclasses.dataclass(frozen=True, slots=True)
class DemoMeta:
    """Which days a demo database covers, and how it was made, read back without rebuilding."""

    first_day: date
    days: int
    seed: int
    sales: int
    photo_base_url: str

    @property
    def last_day(self) -> date:
        return self.first_day + timedelta(days=self.days - 1)


def build_sales_database(
    path: Path,
    *,
    photo_base_url: str,
    first_day: date,
    days: int = 30,
    sales: int = DEFAULT_SALES,
    seed: int = DEFAULT_SEED,
) -> DemoCatalog:
    """Write the demo store's SmartGo database at `path`, replacing any database there.

    The file appears complete or not at all (it is built beside `path` and renamed), so an
    interrupted build never leaves a half-filled store that a later run would mistake for the
    demo. Returns the catalog, whose products `render_photos` draws.
    """
    catalog = plan_demo(first_day=first_day, days=days, sales=sales, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(f".{path.name}.building")
    building.unlink(missing_ok=True)
    connection = sqlite3.connect(building)
    try:
        with connection:
            connection.executescript(SCHEMA)
            connection.executemany(
                "INSERT INTO stores VALUES (?, ?, ?, ?, ?)",
                [(s.store_id, s.name, s.city, s.currency, s.timezone) for s in catalog.stores],
            )
            connection.executemany(
                INSERT_SALE, [_sale_row(sale, photo_base_url) for sale in catalog.sales]
            )
            meta = {
                "first_day": first_day.isoformat(),
                "days": str(days),
                "seed": str(seed),
                "sales": str(sales),
                "photo_base_url": photo_base_url,
            }
            connection.executemany("INSERT INTO demo_meta VALUES (?, ?)", sorted(meta.items()))
    finally:
        connection.close()
    os.replace(building, path)
    return catalog


def _sale_row(sale: DemoSale, photo_base_url: str) -> tuple[Any, ...]:
    product = sale.product
    return (
        sale.sale_id,
        product.store_id,
        sale.till,
        product.sku,
        f"{sale.sold_at:%Y-%m-%d %H:%M:%S}",
        None if sale.price is None else f"{sale.price:.2f}",
        f"{product.list_price:.2f}",
        sale.currency,
        product.title,
        product.brand,
        product.category,
        product.condition,
        product.photo_url(photo_base_url),
        sale.payment_method,
        f"{sale.updated_at:%Y-%m-%d %H:%M:%S}",
    )


def read_demo_meta(path: Path) -> DemoMeta | None:
    """What a demo database covers, or None when `path` is not a complete demo database."""
    if not path.is_file():
        return None
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            meta = dict(connection.execute("SELECT key, value FROM demo_meta").fetchall())
        finally:
            connection.close()
        return DemoMeta(
            first_day=date.fromisoformat(meta["first_day"]),
            days=int(meta["days"]),
            seed=int(meta["seed"]),
            sales=int(meta["sales"]),
            photo_base_url=meta["photo_base_url"],
        )
    except (sqlite3.Error, KeyError, ValueError):
        return None
