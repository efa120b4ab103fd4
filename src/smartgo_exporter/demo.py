"""The embedded demo: a SmartGo store's sales database, its product photos and a photo server.

Everything a user needs to see the exporter work on one machine, with no cloud: a SQLite
point-of-sale database whose column names are the POS's own (so the config's column mapping is
exercised), real photo files in four formats drawn with Pillow (so the embedder sees pictures
where kind and colour decide what looks alike), and a local HTTP server for them (so photos
travel the same fetch path as in production). Some input is bad on purpose, because a demo of
an exporter should show how it reports broken links, missing photos and rows it cannot use.

The blocks are deterministic for a seed: the same seed gives the same rows and the same photo
bytes, so a demo run twice is the same store twice.

    paths = DemoPaths(Path("smartgo-demo"))
    catalog = build_sales_database(
        paths.sales_db, photo_base_url=photo_base_url(), first_day=date(2026, 10, 1)
    )
    render_photos(paths.photos, catalog.products, seed=catalog.seed)
    write_demo_config(paths)
    with serve_photos(paths.photos) as base_url:
        ...  # smartgo-exporter run --config smartgo-demo/smartgo-exporter.toml
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import errno
import functools
import json
import math
import os
import random
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from aiohttp import web
from PIL import Image, ImageDraw, ImageFilter

from smartgo_exporter.config import load_config
from smartgo_exporter.errors import ExporterError
from smartgo_exporter.pipeline import BatchDone, export
from smartgo_exporter.records import RunRecord

DEFAULT_SEED = 20261
DEFAULT_SALES = 2_200
DEFAULT_PHOTO_HOST = "127.0.0.1"
DEFAULT_PHOTO_PORT = 8765
"""Fixed, because the photo URLs stored in the demo database name it."""

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

PHOTO_CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
}


class DemoError(ExporterError):
    """The demo cannot be set up as asked; the message says what to do about it."""


# --- the store -----------------------------------------------------------------------------------


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

_COLOURS: dict[str, tuple[int, int, int]] = {
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


def _plan_product(rng: random.Random, store: DemoStore, sku: str) -> DemoProduct:
    style_name = rng.choices(list(STYLES), [s.weight for s in STYLES.values()])[0]
    style = STYLES[style_name]
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


# --- the database --------------------------------------------------------------------------------

_SCHEMA = """
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

_INSERT_SALE = """
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
            connection.executescript(_SCHEMA)
            connection.executemany(
                "INSERT INTO stores VALUES (?, ?, ?, ?, ?)",
                [(s.store_id, s.name, s.city, s.currency, s.timezone) for s in catalog.stores],
            )
            connection.executemany(
                _INSERT_SALE, [_sale_row(sale, photo_base_url) for sale in catalog.sales]
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


def photo_base_url(host: str = DEFAULT_PHOTO_HOST, port: int = DEFAULT_PHOTO_PORT) -> str:
    """The base URL `serve_photos(host=host, port=port)` serves, known before it starts."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# --- the photos ----------------------------------------------------------------------------------

_RGB = tuple[int, int, int]
_RGBA = tuple[int, int, int, int]
_Point = tuple[float, float]
_Box = tuple[float, float, float, float]

_PHOTO_SIZES = ((400, 400), (480, 480), (512, 512), (560, 560), (600, 600), (640, 480), (480, 640))
_BACKDROPS: tuple[_RGB, ...] = ((246, 244, 240), (234, 234, 236), (241, 235, 224), (229, 234, 239))
_SUPERSAMPLE = 2
_MARGIN = 0.86
"""The part of its square an item fills, so a tilted item still fits."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Look:
    base: _RGB
    trim: _RGB
    """Outlines and seams: the base colour, darker (grey for near-black items)."""
    contrast: _RGB
    """Pattern and stripe colour: light on dark items, dark on light ones."""
    accent: _RGB
    """Hardware, soles, watch cases."""
    detail: _RGB
    """A second fixed part: watch dials, lenses."""
    shape: float
    """0..1: small differences in cut between items of one kind."""


def _darker(colour: _RGB, factor: float = 0.62) -> _RGB:
    r, g, b = (int(c * factor) for c in colour)
    return (r, g, b)


def _luminance(colour: _RGB) -> float:
    r, g, b = colour
    return 0.299 * r + 0.587 * g + 0.114 * b


def _ellipse_points(box: _Box, start: float = 0, end: float = 360, steps: int = 40) -> list[_Point]:
    """Points along an ellipse, angles as Pillow counts them (clockwise from three o'clock)."""
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    if end < start:
        end += 360
    count = max(2, math.ceil(steps * (end - start) / 360))
    angles = (math.radians(start + (end - start) * n / count) for n in range(count + 1))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


def _rounded_points(box: _Box, radius: float) -> list[_Point]:
    x0, y0, x1, y1 = box
    r = min(radius, (x1 - x0) / 2, (y1 - y0) / 2)
    corners = (
        (x1 - r, y1 - r, 0),
        (x0 + r, y1 - r, 90),
        (x0 + r, y0 + r, 180),
        (x1 - r, y0 + r, 270),
    )
    points: list[_Point] = []
    for cx, cy, start in corners:
        points += _ellipse_points((cx - r, cy - r, cx + r, cy + r), start, start + 90, 24)
    return points


class _Sketch:
    """An item drawn straight onto its photo, in unit coordinates (0..100 across its square).

    Parts flagged `behind` (handles, straps) are drawn at once, under the body; the body's
    outline and fill are two masks, drawn at twice the size and reduced so the silhouette comes
    out smooth, then filled with the fabric; the other parts are drawn over it at the end. Every
    shape is a polygon or a line, so the item tilts by rotating points rather than pixels.
    """

    def __init__(self, photo: Image.Image, left: int, top: int, side: int, angle: float) -> None:
        self._canvas = ImageDraw.Draw(photo, "RGBA")
        self._photo, self._left, self._top, self._side = photo, left, top, side
        self._cos, self._sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        big = side * _SUPERSAMPLE
        self._outer = Image.new("L", (big, big), 0)
        self._inner = Image.new("L", (big, big), 0)
        self._outer_draw, self._inner_draw = (
            ImageDraw.Draw(self._outer),
            ImageDraw.Draw(self._inner),
        )
        self._rim: _RGB = (0, 0, 0)
        self._front: list[Callable[[], None]] = []

    def _xy(self, points: Sequence[_Point], *, on_mask: bool = False) -> list[tuple[float, float]]:
        k = self._side * (_SUPERSAMPLE if on_mask else 1) / 100
        dx, dy = (0, 0) if on_mask else (self._left, self._top)
        c, s = self._cos * _MARGIN, self._sin * _MARGIN
        return [
            (
                dx + (50 + (x - 50) * c - (y - 50) * s) * k,
                dy + (50 + (x - 50) * s + (y - 50) * c) * k,
            )
            for x, y in points
        ]

    def _w(self, width: float, *, on_mask: bool = False) -> int:
        return max(1, round(width * self._side * (_SUPERSAMPLE if on_mask else 1) / 100 * _MARGIN))

    def _later(self, behind: bool, draw: Callable[[], None]) -> None:
        if behind:
            draw()
        else:
            self._front.append(draw)

    def body(self, points: Sequence[_Point], outline: _RGB) -> None:
        xy = self._xy(points, on_mask=True)
        self._outer_draw.polygon(xy, fill=255)
        self._outer_draw.line([*xy, xy[0], xy[1]], 255, self._w(1.6, on_mask=True), "curve")
        self._inner_draw.polygon(xy, fill=255)
        self._rim = outline

    def body_ellipse(self, box: _Box, outline: _RGB) -> None:
        self.body(_ellipse_points(box), outline)

    def body_rounded(self, box: _Box, radius: float, outline: _RGB) -> None:
        self.body(_rounded_points(box, radius), outline)

    def polygon(
        self,
        points: Sequence[_Point],
        fill: _RGB | _RGBA,
        outline: _RGB | None = None,
        *,
        behind: bool = False,
    ) -> None:
        xy, width = self._xy(points), self._w(0.8)

        def draw() -> None:
            self._canvas.polygon(xy, fill=fill)
            if outline is not None:
                self._canvas.line([*xy, xy[0], xy[1]], outline, width, "curve")

        self._later(behind, draw)

    def line(
        self, points: Sequence[_Point], fill: _RGB | _RGBA, width: float, *, behind: bool = False
    ) -> None:
        xy, pixels = self._xy(points), self._w(width)
        self._later(behind, lambda: self._canvas.line(xy, fill, pixels, "curve"))

    def ellipse(
        self, box: _Box, fill: _RGB | _RGBA, outline: _RGB | None = None, *, behind: bool = False
    ) -> None:
        self.polygon(_ellipse_points(box), fill, outline, behind=behind)

    def rounded(
        self,
        box: _Box,
        radius: float,
        fill: _RGB | _RGBA,
        outline: _RGB | None = None,
        *,
        behind: bool = False,
    ) -> None:
        self.polygon(_rounded_points(box, radius), fill, outline, behind=behind)

    def arc(
        self,
        box: _Box,
        start: float,
        end: float,
        fill: _RGB | _RGBA,
        width: float,
        *,
        behind: bool = False,
    ) -> None:
        self.line(_ellipse_points(box, start, end), fill, width, behind=behind)

    def finish(self, fabric: Image.Image) -> None:
        """Lay the body (its outline, then its fabric) over the parts behind, then the rest."""
        at, size, mode = (self._left, self._top), (self._side, self._side), self._photo.mode
        rim = Image.new(mode, size, self._rim if mode == "RGB" else (*self._rim, 255))
        self._photo.paste(rim, at, self._outer.reduce(_SUPERSAMPLE))
        fabric = fabric if fabric.mode == mode else fabric.convert(mode)
        self._photo.paste(fabric, at, self._inner.reduce(_SUPERSAMPLE))
        for draw in self._front:
            draw()


_SHADE: _RGBA = (0, 0, 0, 34)
_WOOD: _RGB = (156, 114, 72)


def _hanger(s: _Sketch) -> None:
    s.arc((45, -3, 55, 7), 180, 90, (150, 150, 155), 1.4, behind=True)
    s.line([(50, 6), (24, 16), (76, 16), (50, 6)], _WOOD, 2.2, behind=True)


def _draw_handbag(s: _Sketch, look: _Look) -> None:
    s.arc((28, 10 - 8 * look.shape, 72, 62), 180, 360, look.trim, 5, behind=True)
    s.body([(14, 40), (86, 40), (93, 90), (7, 90)], look.trim)
    s.polygon([(14, 40), (86, 40), (81, 63), (19, 63)], _SHADE, look.trim)
    s.rounded((45, 57, 55, 68), 2, look.accent, _darker(look.accent))
    s.line([(10, 86), (90, 86)], _SHADE, 1)


def _draw_tote(s: _Sketch, look: _Look) -> None:
    lift = 6 * look.shape
    s.arc((26, 10 - lift, 66, 58 + lift), 180, 360, _darker(look.trim, 0.8), 3.5, behind=True)
    s.arc((34, 8 - lift, 74, 60 + lift), 180, 360, look.trim, 3.5, behind=True)
    s.body([(14, 34), (86, 34), (88, 93), (12, 93)], look.trim)
    s.line([(14, 40), (86, 40)], look.trim, 1)


def _draw_crossbody(s: _Sketch, look: _Look) -> None:
    s.arc((16, -8 + 6 * look.shape, 84, 72), 180, 360, look.trim, 2.5, behind=True)
    s.body_rounded((18, 42, 82, 86), 8, look.trim)
    s.polygon([(19, 50), (81, 50), (81, 66), (50, 73), (19, 66)], _SHADE, look.trim)
    s.ellipse((46.5, 65, 53.5, 72), look.accent, _darker(look.accent))


def _draw_sneakers(s: _Sketch, look: _Look) -> None:
    s.body(
        [
            (8, 74),
            (9, 56),
            (24, 52),
            (44, 40),
            (58, 33),
            (68, 36),
            (72, 48),
            (86, 56),
            (95, 65),
            (96, 74),
        ],
        look.trim,
    )
    s.ellipse((8, 49, 30, 58), look.trim)
    for n in range(4):
        x, y = 46 + n * 5.5, 40 + n * 2.6
        s.line([(x, y), (x + 5, y + 6)], (246, 246, 242), 1.6)
    stripe = look.contrast if _luminance(look.base) < 150 else (30, 40, 70)
    s.line([(30, 68), (52, 58), (74, 60)], stripe, 3.2)
    s.arc((74, 52, 104, 86), 250, 330, look.trim, 1)
    s.rounded((5, 72, 97, 84), 5, look.accent, _darker(look.accent, 0.8))


def _draw_boots(s: _Sketch, look: _Look) -> None:
    s.rounded((34, 0, 44, 12), 2, look.trim, behind=True)
    s.body(
        [(30, 6), (58, 6), (60, 54), (72, 58), (88, 63), (95, 71), (95, 80), (28, 80)], look.trim
    )
    s.polygon([(44, 24), (56, 24), (58, 55), (46, 53)], _darker(look.base, 0.72), look.trim)
    s.rounded((26, 79, 97, 87), 2, (42, 34, 30))
    s.polygon([(28, 84), (42, 84), (42, 93), (30, 93)], (42, 34, 30))


def _draw_dress(s: _Sketch, look: _Look) -> None:
    _hanger(s)
    hem = 86 + 9 * look.shape
    flare = 6 * look.shape
    s.line([(40, 15), (43, 5)], look.trim, 1.6)
    s.line([(60, 15), (57, 5)], look.trim, 1.6)
    s.body([(37, 14), (63, 14), (61, 40), (39, 40)], look.trim)
    s.body([(39, 40), (61, 40), (82 + flare, hem), (18 - flare, hem)], look.trim)
    s.arc((42, 6, 58, 22), 10, 170, look.trim, 1.2)
    s.line([(39, 40), (61, 40)], look.trim, 1.4)
    for x0, x1 in ((46, 38), (54, 62), (50, 50)):
        s.line([(x0, 44), (x1, hem - 3)], _SHADE, 1)


def _draw_tshirt(s: _Sketch, look: _Look) -> None:
    s.body(
        [
            (32, 14),
            (42, 10),
            (58, 10),
            (68, 14),
            (90, 30),
            (80, 44),
            (72, 38),
            (72, 92),
            (28, 92),
            (28, 38),
            (20, 44),
            (10, 30),
        ],
        look.trim,
    )
    s.arc((41, 1, 59, 19), 0, 180, look.trim, 2)
    s.line([(28, 88), (72, 88)], _SHADE, 0.8)
    s.line([(17, 40), (13, 34)], _SHADE, 0.8)
    s.line([(83, 40), (87, 34)], _SHADE, 0.8)


def _draw_shirt(s: _Sketch, look: _Look) -> None:
    s.body(
        [
            (32, 12),
            (42, 8),
            (58, 8),
            (68, 12),
            (84, 22),
            (94, 86),
            (84, 88),
            (74, 38),
            (74, 94),
            (26, 94),
            (26, 38),
            (16, 88),
            (6, 86),
            (16, 22),
        ],
        look.trim,
    )
    s.polygon([(42, 8), (50, 18), (40, 23), (35, 12)], look.base, look.trim)
    s.polygon([(58, 8), (50, 18), (60, 23), (65, 12)], look.base, look.trim)
    s.line([(50, 18), (50, 94)], look.trim, 0.8)
    for y in range(26, 92, 11):
        s.ellipse((48.8, y - 1.2, 51.2, y + 1.2), (236, 234, 228), look.trim)
    s.line([(7, 81), (16, 83)], look.trim, 0.8)
    s.line([(93, 81), (84, 83)], look.trim, 0.8)


def _draw_jacket(s: _Sketch, look: _Look) -> None:
    _hanger(s)
    s.body(
        [
            (30, 10),
            (42, 6),
            (58, 6),
            (70, 10),
            (86, 20),
            (96, 84),
            (84, 88),
            (76, 40),
            (76, 95),
            (24, 95),
            (24, 40),
            (16, 88),
            (4, 84),
            (14, 20),
        ],
        look.trim,
    )
    lapel = _darker(look.base, 0.82)
    s.polygon([(42, 6), (50, 30), (44, 40), (35, 13)], lapel, look.trim)
    s.polygon([(58, 6), (50, 30), (56, 40), (65, 13)], lapel, look.trim)
    s.line([(50, 30), (50, 95)], look.accent, 1.1)
    s.polygon([(29, 62), (44, 62), (44, 67), (29, 67)], lapel, look.trim)
    s.polygon([(56, 62), (71, 62), (71, 67), (56, 67)], lapel, look.trim)
    s.line([(5, 79), (16, 83)], look.trim, 1)
    s.line([(95, 79), (84, 83)], look.trim, 1)


def _draw_jeans(s: _Sketch, look: _Look) -> None:
    s.body([(26, 6), (74, 6), (80, 96), (56, 96), (50, 34), (44, 96), (20, 96)], look.trim)
    seam = (206, 136, 54)
    s.line([(26, 12), (74, 12)], look.trim, 1)
    s.line([(50, 12), (50, 30)], seam, 0.7)
    s.arc((28, -2, 44, 26), 0, 90, seam, 0.7)
    s.arc((56, -2, 72, 26), 90, 180, seam, 0.7)
    for x in (30, 42, 58, 70):
        s.rounded((x - 1, 5, x + 1, 13), 0.5, look.trim)
    s.line([(21, 92), (44, 92)], seam, 0.7)
    s.line([(56, 92), (79, 92)], seam, 0.7)


def _draw_chinos(s: _Sketch, look: _Look) -> None:
    s.body([(27, 6), (73, 6), (77, 96), (55, 96), (50, 32), (45, 96), (23, 96)], look.trim)
    s.line([(27, 12), (73, 12)], look.trim, 1)
    s.line([(36, 14), (34, 94)], _SHADE, 0.8)
    s.line([(64, 14), (66, 94)], _SHADE, 0.8)
    s.line([(28, 14), (36, 26)], look.trim, 0.8)
    s.line([(72, 14), (64, 26)], look.trim, 0.8)


def _draw_fedora(s: _Sketch, look: _Look) -> None:
    s.body_ellipse((4, 58 + 2 * look.shape, 96, 82), look.trim)
    s.body([(24, 70), (28, 32), (40, 24), (50, 30), (60, 24), (72, 32), (76, 70)], look.trim)
    s.polygon([(25.5, 56), (74.5, 56), (75.3, 65), (24.7, 65)], _darker(look.base, 0.45))
    s.line([(50, 31), (50, 52)], _SHADE, 1)


def _draw_beanie(s: _Sketch, look: _Look) -> None:
    s.ellipse((40, 2, 60, 22), look.contrast, _darker(look.contrast, 0.85), behind=True)
    s.body([*_ellipse_points((18, 14, 82, 98), 180, 360, 48), (82, 88), (18, 88)], look.trim)
    s.line([(18, 64), (82, 64)], look.trim, 1)
    for x in range(21, 81, 4):
        s.line([(x, 66), (x, 86)], _SHADE, 0.8)


def _draw_watch(s: _Sketch, look: _Look) -> None:
    s.body_rounded((37, 0, 63, 100), 4, look.trim)
    for y in (86, 92):
        s.ellipse((48.6, y - 1.4, 51.4, y + 1.4), look.trim)
    s.rounded((75, 50, 82, 58), 1, look.accent, _darker(look.accent), behind=True)
    s.ellipse((23, 27, 77, 81), look.accent, _darker(look.accent))
    s.ellipse((28.5, 32.5, 71.5, 75.5), look.detail)
    ink = (30, 30, 34) if _luminance(look.detail) > 128 else (236, 236, 232)
    for hour in range(12):
        angle = math.pi * hour / 6
        inner = 15 if hour % 3 else 13
        s.line(
            [
                (50 + inner * math.sin(angle), 54 - inner * math.cos(angle)),
                (50 + 20 * math.sin(angle), 54 - 20 * math.cos(angle)),
            ],
            ink,
            1 if hour % 3 else 1.8,
        )
    # Ten past ten, as every watch advertisement shows it.
    s.line([(50, 54), (50 - 10 * math.sin(math.pi / 3), 54 - 10 * math.cos(math.pi / 3))], ink, 2)
    s.line([(50, 54), (50 + 16 * math.sin(math.pi / 3), 54 - 16 * math.cos(math.pi / 3))], ink, 1.4)
    s.ellipse((48.5, 52.5, 51.5, 55.5), look.accent)


def _draw_sunglasses(s: _Sketch, look: _Look) -> None:
    s.line([(7, 42), (1, 39)], look.trim, 3, behind=True)
    s.line([(93, 42), (99, 39)], look.trim, 3, behind=True)
    s.body_rounded((6, 34, 48, 68), 12, look.trim)
    s.body_rounded((52, 34, 94, 68), 12, look.trim)
    s.arc((42, 35, 58, 51), 180, 360, look.base, 3.2)
    lens = (*look.detail, 240)
    s.rounded((10.5, 38.5, 43.5, 63.5), 9, lens)
    s.rounded((56.5, 38.5, 89.5, 63.5), 9, lens)
    s.line([(15, 46), (23, 42)], (255, 255, 255, 90), 1.5)
    s.line([(61, 46), (69, 42)], (255, 255, 255, 90), 1.5)


_DRAWINGS: dict[str, Callable[[_Sketch, _Look], None]] = {
    "t-shirt": _draw_tshirt,
    "shirt": _draw_shirt,
    "dress": _draw_dress,
    "jeans": _draw_jeans,
    "chinos": _draw_chinos,
    "jacket": _draw_jacket,
    "sneakers": _draw_sneakers,
    "boots": _draw_boots,
    "handbag": _draw_handbag,
    "tote": _draw_tote,
    "crossbody": _draw_crossbody,
    "fedora": _draw_fedora,
    "beanie": _draw_beanie,
    "watch": _draw_watch,
    "sunglasses": _draw_sunglasses,
}


def _look_for(product: DemoProduct, rng: random.Random) -> _Look:
    r, g, b = (min(255, max(0, c + rng.randint(-8, 8))) for c in _COLOURS[product.colour])
    base: _RGB = (r, g, b)
    accent: _RGB = rng.choice(((196, 198, 204), (212, 176, 92)))
    detail: _RGB = rng.choice(((244, 242, 236), (28, 30, 36), (30, 44, 86)))
    if product.style == "sneakers":
        accent = rng.choice(((246, 245, 240), (246, 245, 240), (170, 112, 62)))
    elif product.style == "sunglasses":
        detail = rng.choice(((34, 40, 46), (70, 54, 40), (38, 60, 50)))
    elif product.style == "jacket":
        accent = _darker(base, 0.4)
    return _Look(
        base=base,
        trim=_darker(base) if _luminance(base) > 60 else (92, 92, 100),
        contrast=(30, 40, 72) if _luminance(base) > 140 else (240, 238, 230),
        accent=accent,
        detail=detail,
        shape=rng.random(),
    )


@functools.lru_cache(maxsize=256)
def _shading(width: int, height: int, right: float, bottom: float) -> Image.Image:
    """A mask that darkens by up to `right` across and `bottom` down (0..1): light from the top
    left."""
    ramp = np.linspace(0, 1, 16, dtype=np.float32)
    small = (ramp[None, :] * right + ramp[:, None] * bottom) * 255
    return Image.fromarray(small.astype(np.uint8)).resize(
        (width, height), Image.Resampling.BILINEAR
    )


def _fabric(side: int, look: _Look, pattern: str, angle: float, step: float) -> Image.Image:
    """The item's cloth, leather or plastic: its colour and pattern, turned with the item."""
    plain = pattern not in ("stripes", "dots", "checks")
    cloth = Image.new("RGB", (side, side), look.contrast if pattern == "checks" else look.base)
    draw = ImageDraw.Draw(cloth, "RGBA")
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))

    def turn(u: float, v: float) -> tuple[float, float]:
        return (side / 2 + u * cos - v * sin, side / 2 + u * sin + v * cos)

    reach = side * 0.75
    bands = range(-math.ceil(reach / step), math.ceil(reach / step) + 1)
    if pattern == "stripes":
        for n in bands[::2]:
            v0, v1 = n * step, (n + 1) * step
            corners = [turn(-reach, v0), turn(reach, v0), turn(reach, v1), turn(-reach, v1)]
            draw.polygon(corners, fill=look.contrast)
    elif pattern == "dots":
        period, radius = step * 1.8, step * 0.42
        rows = range(-math.ceil(reach / period), math.ceil(reach / period) + 1)
        for row in rows:
            for column in rows:
                x, y = turn((column + row % 2 / 2) * period, row * period)
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=look.contrast)
    elif pattern == "checks":
        # Gingham: where bands of the base colour cross, the base shows strongest.
        for n in bands[::2]:
            a0, a1 = n * step, (n + 1) * step
            draw.polygon(
                [turn(-reach, a0), turn(reach, a0), turn(reach, a1), turn(-reach, a1)],
                fill=(*look.base, 150),
            )
            draw.polygon(
                [turn(a0, -reach), turn(a0, reach), turn(a1, reach), turn(a1, -reach)],
                fill=(*look.base, 150),
            )
    del plain
    cloth.paste(Image.new("RGB", (side, side)), (0, 0), _shading(side, side, 0.16, 0.08))
    return cloth


@functools.lru_cache(maxsize=32)
def _studio_wall(width: int, height: int, colour: _RGB) -> Image.Image:
    fall = np.linspace(1.0, 0.93, height, dtype=np.float32)[:, None, None]
    column = Image.fromarray((np.array(colour, dtype=np.float32) * fall).astype(np.uint8))
    return column.resize((width, height), Image.Resampling.NEAREST)


def _backdrop(width: int, height: int, colour: _RGB, shadow: _Box) -> Image.Image:
    """A studio backdrop: a soft fall-off towards the floor, and the item's shadow on it."""
    backdrop = _studio_wall(width, height, colour).copy()
    x0, y0, x1, y1 = (round(v) for v in shadow)
    x0, y0, x1, y1 = max(0, x0 - 16), max(0, y0 - 16), min(width, x1 + 16), min(height, y1 + 16)
    if x1 - x0 > 32 and y1 - y0 > 32:
        small = Image.new("L", ((x1 - x0) // 8, (y1 - y0) // 8), 0)
        ImageDraw.Draw(small).ellipse((2, 2, small.width - 3, small.height - 3), fill=80)
        mask = small.filter(ImageFilter.BoxBlur(1)).resize((x1 - x0, y1 - y0))
        backdrop.paste(Image.new("RGB", mask.size, _darker(colour, 0.55)), (x0, y0), mask)
    return backdrop


def draw_photo(product: DemoProduct, *, seed: int) -> Image.Image:
    """The product's photo: RGBA when its background is cut out (some PNGs), else RGB.

    Variation comes from the seed and the sku only, so a product looks the same in every build
    and in any rendering order, and items of one kind and colour differ only in how they sit.
    """
    rng = random.Random(f"smartgo-photo:{seed}:{product.sku}")
    width, height = rng.choice(_PHOTO_SIZES)
    look = _look_for(product, rng)
    side = round(min(width, height) * rng.uniform(0.76, 0.94) / 8) * 8
    angle = rng.uniform(-7, 7)
    step = side * rng.uniform(0.035, 0.06)
    left = round(min(max(0, width / 2 - side / 2 + rng.uniform(-0.06, 0.06) * width), width - side))
    top = round(
        min(max(0, height / 2 - side / 2 + rng.uniform(-0.05, 0.05) * height), height - side)
    )
    backdrop = rng.choice(_BACKDROPS)
    if (product.photo_name or "").endswith(".png") and rng.random() < 0.5:
        photo = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    else:
        floor = top + side * (0.5 + _MARGIN / 2)
        shadow = (left + side * 0.14, floor - side * 0.05, left + side * 0.86, floor + side * 0.02)
        photo = _backdrop(width, height, backdrop, shadow)
    sketch = _Sketch(photo, left, top, side, angle)
    _DRAWINGS[product.style](sketch, look)
    sketch.finish(_fabric(side, look, product.pattern, angle, step))
    return photo


def _encode(photo: Image.Image, path: Path) -> None:
    suffix = path.suffix
    if suffix == ".jpg":
        photo.save(path, "JPEG", quality=86)
    elif suffix == ".png":
        photo.save(path, "PNG", compress_level=1)
    elif suffix == ".webp":
        photo.save(path, "WEBP", quality=80, method=0)
    elif suffix == ".gif":
        photo.quantize(colors=128, method=Image.Quantize.FASTOCTREE).save(path, "GIF")
    else:
        raise ValueError(f"no demo photo format for {path.name!r}")


def render_photos(
    folder: Path, products: Iterable[DemoProduct], *, seed: int, workers: int | None = None
) -> list[Path]:
    """Draw and save the photo of every product that has one; return the files, by name.

    Products whose link is broken on purpose get no file, so the server answers 404 for them.
    Each file is written beside its name and renamed, so the server never hands out half a
    photo. Threads share the work: Pillow and numpy release the GIL for most of it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    wanted = sorted(
        (p for p in products if p.photo is PhotoState.OK and p.photo_name),
        key=lambda p: p.photo_name or "",
    )

    def render(product: DemoProduct) -> Path:
        assert product.photo_name is not None
        path = folder / product.photo_name
        partial = folder / f".{product.photo_name}.partial{path.suffix}"
        _encode(draw_photo(product, seed=seed), partial)
        os.replace(partial, path)
        return path

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(render, wanted))


# --- the photo server ----------------------------------------------------------------------------


def _photo_app(folder: Path) -> web.Application:
    root = folder.resolve()

    async def photo(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        content_type = PHOTO_CONTENT_TYPES.get(os.path.splitext(name)[1].lower())
        path = root / name
        if content_type is None or name.startswith(".") or path.parent != root:
            raise web.HTTPNotFound()
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/photos/{name}", photo)
    return app


class _PhotoServer:
    """aiohttp on its own event loop in a daemon thread, so callers stay synchronous."""

    def __init__(self, folder: Path, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(_photo_app(folder), access_log=None, handle_signals=False)
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"demo-photos-{port}", daemon=True
        )

    def start(self) -> str:
        self._thread.start()
        try:
            port = asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(timeout=30)
        except OSError as error:
            self.stop()
            if error.errno == errno.EADDRINUSE:
                raise DemoError(
                    f"port {self._port} on {self._host} is already in use, and the demo's photo "
                    f"URLs name that port; stop whatever listens there (an earlier demo?), or "
                    f"rebuild the demo on another port"
                ) from None
            raise DemoError(
                f"cannot serve the demo photos on {self._host}:{self._port}: "
                f"{error.strerror or error}"
            ) from None
        return photo_base_url(self._host, port)

    async def _open(self) -> int:
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        bound: int = self._runner.addresses[0][1]
        return bound

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


@contextlib.contextmanager
def serve_photos(
    folder: Path, host: str = DEFAULT_PHOTO_HOST, port: int = DEFAULT_PHOTO_PORT
) -> Iterator[str]:
    """Serve `folder` as /photos/<name> over HTTP while the block runs; yield the base URL.

    A real HTTP server, so demo photos take the exporter's production fetch path (URL guard,
    retries, content checks). Only photo files are served, with their image Content-Type;
    anything else is 404. The port is fixed by default because the URLs stored in the demo
    database name it; port 0 picks a free one (for tests). A taken port raises DemoError.
    """
    server = _PhotoServer(folder, host, port)
    base_url = server.start()
    try:
        yield base_url
    finally:
        server.stop()


# --- the layout and the config -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class DemoPaths:
    """Where a demo's files live under one folder; the written config names them relative to it."""

    root: Path

    @property
    def sales_db(self) -> Path:
        return self.root / "sales.db"

    @property
    def photos(self) -> Path:
        return self.root / "photos"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse"

    @property
    def progress_db(self) -> Path:
        return self.root / "progress.db"

    @property
    def config(self) -> Path:
        return self.root / "smartgo-exporter.toml"


def _toml(value: str | Sequence[str]) -> str:
    # A JSON string is a valid TOML basic string.
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(json.dumps(item) for item in value) + "]"


def write_demo_config(
    paths: DemoPaths, *, allow_networks: Sequence[str] = (f"{DEFAULT_PHOTO_HOST}/32",)
) -> Path:
    """Write the config a user passes to `smartgo-exporter run --config`; return its path.

    Paths in it are relative, so the demo folder can move; the exporter reads them relative to
    the file's folder. Loopback is allowed for photos only because the demo serves its own.
    """
    relative = {
        "sales": paths.sales_db.relative_to(paths.root).as_posix(),
        "warehouse": paths.warehouse.relative_to(paths.root).as_posix(),
        "progress": paths.progress_db.relative_to(paths.root).as_posix(),
    }
    columns = "\n".join(f"{field} = {_toml(column)}" for field, column in SALE_COLUMNS.items())
    text = f"""\
# The smartgo-exporter demo: a SmartGo store on this machine. Written by `smartgo-exporter demo`;
# paths are relative to this file's folder.

[export]
timezone = "UTC"

[source]
type = "sql"
url = {_toml("sqlite:///" + relative["sales"])}
table = {_toml(SALES_TABLE)}
timezone = "UTC"

[source.columns]
{columns}

[photos]
# The demo's own photo server runs on loopback, which is refused unless allowed here.
allow_networks = {_toml(list(allow_networks))}

[table.catalog]
type = "sql"
uri = {_toml("sqlite:///" + relative["warehouse"] + "/catalog.db")}
warehouse = {_toml("file://" + relative["warehouse"])}

[progress]
type = "sqlite"
path = {_toml(relative["progress"])}
"""
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(text, encoding="utf-8")
    return paths.config


# --- the demo run --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class DemoOutcome:
    paths: DemoPaths
    summary: DemoSummary
    records: list[RunRecord]


def run_demo(
    root: Path,
    *,
    fresh: bool = False,
    port: int = DEFAULT_PHOTO_PORT,
    sales: int = DEFAULT_SALES,
    on_batch: Callable[[BatchDone], None] | None = None,
) -> DemoOutcome:
    """Build the demo store under `root` (once), serve its photos and export every one of its days.

    The store is built on the first run and kept: its days are fixed then (the 30 days before
    that first run), so a second run exports exactly the same sales and, with nothing changed,
    writes nothing. `fresh` throws away the store, the warehouse and the run history and starts
    again. A different `port` changes every photo URL, so it rebuilds the database (same seed,
    same sales) and the photos are fetched and embedded again.
    """
    paths = DemoPaths(root)
    base_url = photo_base_url(port=port)
    if fresh:
        for folder in (paths.warehouse, paths.photos):
            shutil.rmtree(folder, ignore_errors=True)
        for file in (paths.sales_db, paths.progress_db):
            file.unlink(missing_ok=True)
    meta = read_demo_meta(paths.sales_db)
    if meta is None or meta.photo_base_url != base_url:
        first_day = meta.first_day if meta else datetime.now(UTC).date() - timedelta(days=30)
        catalog = build_sales_database(
            paths.sales_db, photo_base_url=base_url, first_day=first_day, sales=sales
        )
    else:
        catalog = plan_demo(
            first_day=meta.first_day, days=meta.days, sales=meta.sales, seed=meta.seed
        )
    missing = [
        p for p in catalog.products if p.photo_name and not (paths.photos / p.photo_name).exists()
    ]
    render_photos(paths.photos, missing, seed=catalog.seed)
    settings = load_config(write_demo_config(paths))
    day_list = [catalog.first_day + timedelta(days=n) for n in range(catalog.days)]
    with serve_photos(paths.photos, port=port):
        records = export(settings, day_list, trigger="demo", on_batch=on_batch)
    return DemoOutcome(paths, catalog.summary, records)
