"""The demo's product photos: real image files in four formats, drawn with Pillow.

Kind and colour decide what looks alike, so the similarity search over the exported embeddings
has something true to find; no photo is downloaded from anywhere. An item is drawn as its kind
is (`demo.drawings`); here it is posed on a studio backdrop with its shadow (`draw_photo`) or,
for a new shot of it, with its brand's label over whatever `photo` holds (`draw_item`), and the
demo's photos are written and served as files (`render_photos`)."""

from __future__ import annotations

import functools
import math
import os
import random
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from smartgo_exporter.demo.drawings import draw_kind
from smartgo_exporter.demo.looks import look_for
from smartgo_exporter.demo.plan import DemoProduct, PhotoState
from smartgo_exporter.demo.sketch import MARGIN, RGB, Box, Sketch, darker

_PHOTO_SIZES = ((400, 400), (480, 480), (512, 512), (560, 560), (600, 600), (640, 480), (480, 640))
_BACKDROPS: tuple[RGB, ...] = ((246, 244, 240), (234, 234, 236), (241, 235, 224), (229, 234, 239))


@functools.lru_cache(maxsize=32)
def _studio_wall(width: int, height: int, colour: RGB) -> Image.Image:
    fall = np.linspace(1.0, 0.93, height, dtype=np.float32)[:, None, None]
    column = Image.fromarray((np.array(colour, dtype=np.float32) * fall).astype(np.uint8))
    return column.resize((width, height), Image.Resampling.NEAREST)


def _backdrop(width: int, height: int, colour: RGB, shadow: Box) -> Image.Image:
    """A studio backdrop: a soft fall-off towards the floor, and the item's shadow on it."""
    backdrop = _studio_wall(width, height, colour).copy()
    x0, y0, x1, y1 = (round(v) for v in shadow)
    x0, y0, x1, y1 = max(0, x0 - 16), max(0, y0 - 16), min(width, x1 + 16), min(height, y1 + 16)
    if x1 - x0 > 32 and y1 - y0 > 32:
        small = Image.new("L", ((x1 - x0) // 8, (y1 - y0) // 8), 0)
        ImageDraw.Draw(small).ellipse((2, 2, small.width - 3, small.height - 3), fill=80)
        mask = small.filter(ImageFilter.BoxBlur(1)).resize((x1 - x0, y1 - y0))
        backdrop.paste(Image.new("RGB", mask.size, darker(colour, 0.55)), (x0, y0), mask)
    return backdrop


def draw_photo(product: DemoProduct, *, seed: int) -> Image.Image:
    """The product's photo: RGBA when its background is cut out (some PNGs), else RGB.

    Variation comes from the seed and the sku only, so a product looks the same in every build
    and in any rendering order, and items of one kind and colour differ only in how they sit.
    """
    rng = random.Random(f"smartgo-photo:{seed}:{product.sku}")
    width, height = rng.choice(_PHOTO_SIZES)
    look = look_for(product, rng)
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
        floor = top + side * (0.5 + MARGIN / 2)
        shadow = (left + side * 0.14, floor - side * 0.05, left + side * 0.86, floor + side * 0.02)
        photo = _backdrop(width, height, backdrop, shadow)
    draw_kind(photo, product, look, (left, top, side), angle, step)
    return photo


def draw_item(
    photo: Image.Image,
    product: DemoProduct,
    *,
    seed: int,
    box: tuple[int, int, int],
    angle: float,
) -> None:
    """Draw the product's item onto `photo` (RGB or RGBA), in the square `box` (left, top, side),
    tilted by `angle` degrees.

    What the item looks like (its exact colour, hardware, cut, pattern scale and where its brand
    label sits) comes from the seed and the sku only, and where it sits from the arguments:
    every call draws the same item, posed anew, over whatever backdrop `photo` already holds.
    That is a second shot of one item, which a re-encoded copy of its photo is not. The demo's
    own photos are drawn by `draw_photo`, whose looks come from its photo's random stream and
    so differ from these, and carry no label.
    """
    rng = random.Random(f"smartgo-item:{seed}:{product.sku}")
    look = look_for(product, rng)
    sketch = draw_kind(photo, product, look, box, angle, box[2] * rng.uniform(0.035, 0.06))
    _label(sketch, product.brand, rng)


_LABEL_COLOURS: tuple[RGB, ...] = (
    (200, 30, 40),
    (245, 245, 240),
    (20, 20, 24),
    (212, 176, 92),
    (30, 90, 170),
    (40, 140, 70),
    (240, 140, 30),
    (150, 60, 160),
)


def _label(sketch: Sketch, brand: str, rng: random.Random) -> None:
    """The brand's label, sewn on where this one item has it.

    Its colours and shape are the brand's (chosen by its name), its place and size the item's:
    the one thing that tells apart two items of one kind, colour and brand in a photo, as a
    print, a tag or wear does on real second-hand items.
    """
    mark = random.Random(f"smartgo-label:{brand}")
    fill, edge = mark.sample(_LABEL_COLOURS, 2)
    corners = mark.choice((3, 4, 4, 6, 24))
    xs = [x for x, _ in sketch.first_body]
    ys = [y for _, y in sketch.first_body]
    cx = (min(xs) + max(xs)) / 2 + rng.uniform(-0.22, 0.22) * (max(xs) - min(xs))
    cy = (min(ys) + max(ys)) / 2 + rng.uniform(-0.22, 0.22) * (max(ys) - min(ys))
    radius = rng.uniform(4.5, 8.0)
    turn = mark.uniform(0, 2 * math.pi)
    points = [
        (
            cx + radius * math.cos(turn + 2 * math.pi * n / corners),
            cy + radius * math.sin(turn + 2 * math.pi * n / corners),
        )
        for n in range(corners)
    ]
    sketch.polygon(points, fill, edge)
    sketch.flush()


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
