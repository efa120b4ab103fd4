"""An item's colours and cloth: what the drawing of its kind is given to draw it in.

A product names a colour and a pattern (`demo.plan`); its look is that colour, varied a little,
with the trim, contrast, accent and detail colours that go with it, and its fabric is that look
in the product's pattern (plain, stripes, dots or checks), turned with the item and shaded from
the top left. Apart from the drawings (`demo.drawings`) because it is the same for every kind:
two items of one kind differ in their look, and every kind is filled with a fabric.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random

import numpy as np
from PIL import Image, ImageDraw

from smartgo_exporter.demo.plan import DemoProduct
from smartgo_exporter.demo.shops import COLOURS
from smartgo_exporter.demo.sketch import RGB, darker, luminance


@dataclasses.dataclass(frozen=True, slots=True)
class Look:
    """How one item is coloured and cut: what its kind's drawing is given."""

    base: RGB
    trim: RGB
    """Outlines and seams: the base colour, darker (grey for near-black items)."""
    contrast: RGB
    """Pattern and stripe colour: light on dark items, dark on light ones."""
    accent: RGB
    """Hardware, soles, watch cases."""
    detail: RGB
    """A second fixed part: watch dials, lenses."""
    shape: float
    """0..1: small differences in cut between items of one kind."""


def look_for(product: DemoProduct, rng: random.Random) -> Look:
    """The product's colour, varied a little by `rng`, and the trim and parts its kind has."""
    r, g, b = (min(255, max(0, c + rng.randint(-8, 8))) for c in COLOURS[product.colour])
    base: RGB = (r, g, b)
    accent: RGB = rng.choice(((196, 198, 204), (212, 176, 92)))
    detail: RGB = rng.choice(((244, 242, 236), (28, 30, 36), (30, 44, 86)))
    if product.style == "sneakers":
        accent = rng.choice(((246, 245, 240), (246, 245, 240), (170, 112, 62)))
    elif product.style == "sunglasses":
        detail = rng.choice(((34, 40, 46), (70, 54, 40), (38, 60, 50)))
    elif product.style == "jacket":
        accent = darker(base, 0.4)
    return Look(
        base=base,
        trim=darker(base) if luminance(base) > 60 else (92, 92, 100),
        contrast=(30, 40, 72) if luminance(base) > 140 else (240, 238, 230),
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


def fabric(side: int, look: Look, pattern: str, angle: float, step: float) -> Image.Image:
    """The item's cloth, leather or plastic: its colour and pattern, turned with the item."""
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
    cloth.paste(Image.new("RGB", (side, side)), (0, 0), _shading(side, side, 0.16, 0.08))
    return cloth
