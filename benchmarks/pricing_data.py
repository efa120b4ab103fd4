"""A seeded evaluation set of resale products: what they sold for, and photos of each, twice over.

Built for two questions. Does an embedding find the same item again from a new shot of it
(`bench_embedding.py`)? And how well do look-alike sold items price a new one
(`bench_pricing.py`)? So every product has:

- a "stored" photo, as the store's listing has it: a studio backdrop, the item centred and
  nearly upright, a good JPEG;
- new shots of the same item: drawn again (same kind, colour, pattern, cut, hardware, since
  they come from the product's own seed), not copied from the stored photo, over another
  backdrop (any colour, a gradient or a texture), at another place, size and tilt (up to 20
  degrees), sometimes mirrored, under other light (brightness, contrast, colour temperature),
  re-encoded as a JPEG of quality 55-92 or as WebP;
- look-alikes: products come in families of one kind and colour, whose members differ in
  pattern or brand (the brand's label: its shape and colours), on top of the many other
  products that share a kind and colour by chance; two items of one kind, colour, pattern and
  brand still differ a little, as second-hand ones do: in cut, hardware, pattern scale and
  where the label sits;
- a price a resale store would ask: the kind's base price, times its brand's tier, times its
  condition (new with tags 1.0 down to fair 0.4), times lognormal noise of about 20%; mostly in
  euros, a quarter in pounds; sold at some moment of one year.

The drawing is the demo's (`smartgo_exporter.demo.photos.draw_item`), the kinds, colours,
brands and titles its stores' (`smartgo_exporter.demo.shops`, `.plan`). Everything is deterministic
from the seed, in any order and on any number of processes:

    products = build_products(3000, seed=0)
    photos = render_photos(products, shots=4)          # a process per core
    gallery = [p.stored for p in photos]                # bytes, one per product
    queries = [(i, shot) for i, p in enumerate(photos) for shot in p.shots]
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import random
import statistics
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter

from smartgo_exporter.demo.photos import draw_item
from smartgo_exporter.demo.plan import DemoProduct, PhotoState, _plan_product
from smartgo_exporter.demo.shops import STORES, STYLES

DEFAULT_PRODUCTS = 3_000
DEFAULT_SHOTS = 4
CONDITION_FACTORS = {
    "New with tags": 1.0,
    "Like new": 0.8,
    "Very good": 0.7,
    "Good": 0.6,
    "Fair": 0.4,
}
"""What a condition does to a resale price, relative to new with tags."""
PRICE_NOISE = 0.2
"""Sigma of the lognormal noise on a price: two like items rarely sell for the same."""
FAMILY_SIZES = ((2, 2), (3, 3), (4, 3), (6, 2), (8, 1))
"""(products of one kind and colour planned together, weight)."""
FIRST_SALE = datetime(2025, 12, 1, tzinfo=UTC)
SALE_DAYS = 365
_CURRENCIES = ((STORES[0], 25), (STORES[1], 40), (STORES[2], 35))
"""(store, weight): London sells in pounds, Berlin and Amsterdam in euros."""
_STORED_SIZES = ((480, 480), (512, 512), (560, 560), (600, 600))
_SHOT_SIZES = ((400, 400), (480, 480), (560, 560), (640, 480), (480, 640), (600, 450), (450, 600))
_STUDIO: tuple[tuple[int, int, int], ...] = (
    (246, 244, 240),
    (234, 234, 236),
    (241, 235, 224),
    (229, 234, 239),
)
_SEED_SALT = "smartgo-eval"


@dataclasses.dataclass(frozen=True, slots=True)
class EvalProduct:
    """One sold item. Its look comes from (`seed`, `product_id`): every photo of it agrees."""

    product_id: str
    kind: str
    """A key of the demo's STYLES: what the item is, and how it is drawn."""
    category: str
    brand: str
    condition: str
    colour: str
    pattern: str
    title: str
    price: Decimal
    """In `currency`, two decimal places."""
    currency: str
    sold_at: datetime
    family: int
    """Products planned together share kind and colour: each other's look-alikes."""
    seed: int

    def drawn_as(self) -> DemoProduct:
        """The demo product the drawing code takes; only kind, colour, pattern and sku count."""
        return DemoProduct(
            sku=self.product_id,
            store_id="",
            style=self.kind,
            colour=self.colour,
            pattern=self.pattern,
            title=self.title,
            brand=self.brand,
            category=self.category,
            condition=self.condition,
            list_price=self.price,
            currency=self.currency,
            units=1,
            photo=PhotoState.OK,
            photo_name=None,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class EvalPhotos:
    """A product's photos, encoded: the stored one and its new shots."""

    stored: bytes
    shots: tuple[bytes, ...]


def build_products(count: int = DEFAULT_PRODUCTS, seed: int = 0) -> list[EvalProduct]:
    """`count` products in families of one kind and colour, deterministic from `seed`."""
    rng = random.Random(f"{_SEED_SALT}:{seed}")
    styles = list(STYLES)
    weights = [STYLES[name].weight for name in styles]
    products: list[EvalProduct] = []
    family = 0
    while len(products) < count:
        kind = rng.choices(styles, weights)[0]
        colour = rng.choice(STYLES[kind].colours)
        size = rng.choices([s for s, _ in FAMILY_SIZES], [w for _, w in FAMILY_SIZES])[0]
        for _ in range(min(size, count - len(products))):
            products.append(_plan(rng, f"EV{len(products):06d}", kind, colour, family, seed))
        family += 1
    return products


def _plan(
    rng: random.Random, product_id: str, kind: str, colour: str, family: int, seed: int
) -> EvalProduct:
    store = rng.choices([s for s, _ in _CURRENCIES], [w for _, w in _CURRENCIES])[0]
    planned = _plan_product(rng, store, product_id, style_name=kind, colour=colour)
    euros = (
        _kind_base_price(kind)
        * _brand_tier(kind, planned.brand)
        * CONDITION_FACTORS[planned.condition]
        * math.exp(rng.gauss(0.0, PRICE_NOISE))
    )
    price = (Decimal(repr(max(euros, 2.0))) * store.euro_rate).quantize(Decimal("0.01"))
    sold_at = FIRST_SALE + timedelta(seconds=rng.randrange(SALE_DAYS * 86_400))
    return EvalProduct(
        product_id=product_id,
        kind=kind,
        category=planned.category,
        brand=planned.brand,
        condition=planned.condition,
        colour=colour,
        pattern=planned.pattern,
        title=planned.title,
        price=price,
        currency=store.currency,
        sold_at=sold_at,
        family=family,
        seed=seed,
    )


def _brand_midpoints(kind: str) -> dict[str, float]:
    return {brand: (low + high) / 2 for brand, _, low, high in STYLES[kind].brands}


def _kind_base_price(kind: str) -> float:
    """The euro price of a like-new item of the kind by a middling brand: its brands' median."""
    return statistics.median(_brand_midpoints(kind).values())


def _brand_tier(kind: str, brand: str) -> float:
    """How much more than the kind's middling brand this brand sells for (0.3x to 4x)."""
    return _brand_midpoints(kind)[brand] / _kind_base_price(kind)


def stored_photo(product: EvalProduct) -> bytes:
    """The listing's photo: a light studio backdrop, the item centred and nearly upright."""
    rng = random.Random(f"{_SEED_SALT}:{product.seed}:{product.product_id}:stored")
    width, height = rng.choice(_STORED_SIZES)
    canvas = _studio(width, height, rng.choice(_STUDIO))
    side = round(min(width, height) * rng.uniform(0.76, 0.94))
    left = round((width - side) / 2 + rng.uniform(-0.04, 0.04) * width)
    top = round((height - side) / 2 + rng.uniform(-0.04, 0.04) * height)
    box = (max(0, min(left, width - side)), max(0, min(top, height - side)), side)
    draw_item(canvas, product.drawn_as(), seed=product.seed, box=box, angle=rng.uniform(-7, 7))
    return encode_photo(canvas, "JPEG", 86)


def new_shots(product: EvalProduct, count: int = DEFAULT_SHOTS) -> list[bytes]:
    """`count` new photos of the item, each posed, lit, framed and encoded in its own way."""
    return [_new_shot(product, n) for n in range(count)]


def _new_shot(product: EvalProduct, number: int) -> bytes:
    rng = random.Random(f"{_SEED_SALT}:{product.seed}:{product.product_id}:shot:{number}")
    width, height = rng.choice(_SHOT_SIZES)
    canvas = _random_backdrop(width, height, rng)
    side = round(min(width, height) * rng.uniform(0.5, 0.95))
    left = rng.randint(0, width - side)
    top = rng.randint(0, height - side)
    if rng.random() < 0.5:
        _cast_shadow(canvas, (left, top, side), rng)
    draw_item(
        canvas,
        product.drawn_as(),
        seed=product.seed,
        box=(left, top, side),
        angle=rng.uniform(-20, 20),
    )
    return _finish_shot(canvas, rng)


def reshoot(photo: Image.Image, rng: random.Random) -> bytes:
    """A new shot of a whole photo (a real one, which has its own backdrop): tilted, placed on
    another backdrop, mirrored, relit and re-encoded as `new_shots` does with a drawn item."""
    width, height = rng.choice(_SHOT_SIZES)
    canvas = _random_backdrop(width, height, rng)
    tilted = photo.convert("RGBA").rotate(rng.uniform(-20, 20), Image.Resampling.BICUBIC, True)
    scale = rng.uniform(0.6, 1.0) * min(width / tilted.width, height / tilted.height)
    size = (max(1, round(tilted.width * scale)), max(1, round(tilted.height * scale)))
    placed = tilted.resize(size, Image.Resampling.BICUBIC)
    at = (rng.randint(0, width - size[0]), rng.randint(0, height - size[1]))
    canvas.paste(placed, at, placed)
    return _finish_shot(canvas, rng)


def _finish_shot(canvas: Image.Image, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    canvas = _relight(canvas, rng)
    if rng.random() < 0.7:
        return encode_photo(canvas, "JPEG", rng.randint(55, 92))
    return encode_photo(canvas, "WEBP", rng.randint(60, 90))


def render_photos(
    products: Sequence[EvalProduct], shots: int = DEFAULT_SHOTS, *, workers: int | None = None
) -> list[EvalPhotos]:
    """Every product's stored photo and `shots` new ones, in product order.

    Drawing holds the GIL, so the work goes to a process per core (`workers`), in chunks.
    """
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(products) < 16:
        return [_photos_of(product, shots) for product in products]
    chunk = max(1, min(64, len(products) // (workers * 4)))
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_photos_of, products, [shots] * len(products), chunksize=chunk))


def _photos_of(product: EvalProduct, shots: int) -> EvalPhotos:
    return EvalPhotos(stored=stored_photo(product), shots=tuple(new_shots(product, shots)))


def encode_photo(image: Image.Image, fmt: str, quality: int) -> bytes:
    """`image` as a JPEG or WebP file of `quality`."""
    buffer = io.BytesIO()
    if fmt == "WEBP":
        image.save(buffer, fmt, quality=quality, method=0)
    else:
        image.save(buffer, fmt, quality=quality)
    return buffer.getvalue()


def _studio(width: int, height: int, colour: tuple[int, int, int]) -> Image.Image:
    fall = np.linspace(1.0, 0.93, height, dtype=np.float32)[:, None, None]
    wall = np.broadcast_to(np.asarray(colour, dtype=np.float32) * fall, (height, width, 3))
    return Image.fromarray(wall.astype(np.uint8), "RGB")


def _random_colour(rng: random.Random) -> NDArray[np.float32]:
    """Any backdrop colour: greys, pastels, strong colours, dark ones."""
    hue, saturation = rng.random(), rng.choice((0.0, 0.1, 0.25, 0.5, 0.8))
    value = rng.uniform(0.25, 1.0)
    i, f = int(hue * 6) % 6, hue * 6 - int(hue * 6)
    p, q, t = (
        value * (1 - saturation),
        value * (1 - saturation * f),
        value * (1 - saturation * (1 - f)),
    )
    rgb = [
        (value, t, p),
        (q, value, p),
        (p, value, t),
        (p, q, value),
        (t, p, value),
        (value, p, q),
    ][i]
    return np.asarray(rgb, dtype=np.float32) * 255


def _random_backdrop(width: int, height: int, rng: random.Random) -> Image.Image:
    """A solid colour, a gradient in any direction, or a texture (wood, cloth, noise, tiles)."""
    kind = rng.choice(("solid", "gradient", "gradient", "wood", "cloth", "noise", "tiles"))
    nprng = np.random.default_rng(rng.randrange(2**32))
    a, b = _random_colour(rng), _random_colour(rng)
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    if kind == "solid":
        field = np.zeros((1, 1), dtype=np.float32)
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        ramp = x * math.cos(angle) + y * math.sin(angle)
        field = (ramp - ramp.min()) / max(1.0, float(ramp.max() - ramp.min()))
    elif kind == "wood":
        period = rng.uniform(12, 40)
        wobble = _smooth_noise(nprng, height, width, 24) * rng.uniform(4, 12)
        field = 0.5 + 0.5 * np.sin((y + wobble) * 2 * math.pi / period)
        field = field * 0.6 + _smooth_noise(nprng, height, width, 4) * 0.2
    elif kind == "cloth":
        period = rng.uniform(3, 8)
        weave = np.sin(x * 2 * math.pi / period) * np.sin(y * 2 * math.pi / period)
        field = 0.5 + 0.25 * weave + 0.25 * _smooth_noise(nprng, height, width, 32)
    elif kind == "noise":
        field = _smooth_noise(nprng, height, width, rng.choice((8, 24, 64)))
    else:
        tile = rng.randint(40, 120)
        grout = ((x % tile) < 3) | ((y % tile) < 3)
        field = np.where(grout, 1.0, 0.15 * _smooth_noise(nprng, height, width, 16))
        field = field.astype(np.float32)
    if kind not in ("solid", "gradient"):
        b = a + (b - a) * rng.uniform(0.2, 0.6)  # a texture stays within one colour family
    grain = nprng.integers(0, 4, (height, width), dtype=np.uint8)
    levels = np.broadcast_to(np.clip(field, 0, 1) * np.float32(251), (height, width))
    shades = Image.fromarray(levels.astype(np.uint8) + grain, "L")
    # Each channel runs from a to b as the field goes from 0 to 1: a lookup table per channel.
    ramp = np.linspace(0, 1, 256)
    return Image.merge(
        "RGB",
        [shades.point([round(float(v)) for v in a[c] + (b[c] - a[c]) * ramp]) for c in range(3)],
    )


def _smooth_noise(
    nprng: np.random.Generator, height: int, width: int, cell: int
) -> NDArray[np.float32]:
    """Noise in 0..1 with features about `cell` pixels across."""
    small = nprng.random((max(2, height // cell + 2), max(2, width // cell + 2)), dtype=np.float32)
    image = Image.fromarray((small * 255).astype(np.uint8), "L")
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC), np.float32) / 255


def _cast_shadow(canvas: Image.Image, box: tuple[int, int, int], rng: random.Random) -> None:
    """A soft dark ellipse under the item, as a lamp throws it."""
    left, top, side = box
    small = Image.new("L", (max(8, side // 8), max(4, side // 32)), 0)
    ImageDraw.Draw(small).ellipse(
        (1, 1, small.width - 2, small.height - 2), fill=rng.randint(50, 110)
    )
    mask = small.filter(ImageFilter.BoxBlur(1)).resize((side, max(8, side // 4)))
    floor = top + round(side * 0.86)
    canvas.paste((0, 0, 0), (left + rng.randint(-side // 16, side // 16), floor), mask)


def _relight(image: Image.Image, rng: random.Random) -> Image.Image:
    """Another lamp: brighter or darker, more or less contrast, warmer or colder."""
    brightness, contrast = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
    warmth = rng.uniform(-0.08, 0.08)
    levels = ((np.arange(256) - 128.0) * contrast + 128.0) * brightness
    tables = [np.clip(levels * gain, 0, 255).round() for gain in (1 + warmth, 1.0, 1 - warmth)]
    return image.point([int(v) for table in tables for v in table])
