"""The demo's three shops and what they sell: kinds of item, brands, prices, colours, conditions.

Fixed data, the same for every seed: the plan (`demo.plan`) draws a store's products from it,
and the photos (`demo.photos`) draw each kind by its key in STYLES and each colour by its RGB.
Apart from the plan because this is what one edits to change what the demo sells, while the
plan (how a seed turns it into products and sales) stays as it is.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal


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

CONDITIONS = (
    ("New with tags", 10, 1.0),
    ("Like new", 25, 0.85),
    ("Very good", 35, 0.7),
    ("Good", 22, 0.55),
    ("Fair", 8, 0.4),
)
"""(label, how often, price factor): condition is most of a resale price."""
