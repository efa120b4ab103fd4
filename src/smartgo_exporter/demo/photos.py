"""The demo's product photos: real image files in four formats, drawn with Pillow.

Kind and colour decide what looks alike, so the similarity search over the exported embeddings
has something true to find; no photo is downloaded from anywhere."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import random
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from smartgo_exporter.demo.plan import DemoProduct, PhotoState
from smartgo_exporter.demo.shops import COLOURS

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
        self.first_body: Sequence[_Point] = ()
        """The first body part drawn, in unit coordinates: where a label can go."""

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
        self.first_body = self.first_body or points

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
        self.flush()

    def flush(self) -> None:
        """Draw the parts in front that are still waiting."""
        for draw in self._front:
            draw()
        self._front.clear()


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
    r, g, b = (min(255, max(0, c + rng.randint(-8, 8))) for c in COLOURS[product.colour])
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
    _draw_item(photo, product, look, (left, top, side), angle, step)
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
    look = _look_for(product, rng)
    sketch = _draw_item(photo, product, look, box, angle, box[2] * rng.uniform(0.035, 0.06))
    _label(sketch, product.brand, rng)


_LABEL_COLOURS: tuple[_RGB, ...] = (
    (200, 30, 40),
    (245, 245, 240),
    (20, 20, 24),
    (212, 176, 92),
    (30, 90, 170),
    (40, 140, 70),
    (240, 140, 30),
    (150, 60, 160),
)


def _label(sketch: _Sketch, brand: str, rng: random.Random) -> None:
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


def _draw_item(
    photo: Image.Image,
    product: DemoProduct,
    look: _Look,
    box: tuple[int, int, int],
    angle: float,
    step: float,
) -> _Sketch:
    left, top, side = box
    sketch = _Sketch(photo, left, top, side, angle)
    _DRAWINGS[product.style](sketch, look)
    sketch.finish(_fabric(side, look, product.pattern, angle, step))
    return sketch


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
