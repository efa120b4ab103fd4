"""The surface the demo's items are drawn on: shapes in unit coordinates, tilted as a whole.

An item is drawn in a square of its photo, in coordinates 0..100 across it, and tilted by
rotating its points rather than its pixels (`Sketch`); its body's silhouette is drawn at twice
the size and reduced, so it comes out smooth. Apart from the drawings of each kind
(`demo.drawings`) because it is geometry and Pillow, the same for every kind: a new kind of
item is a new drawing and nothing here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
RGBA = tuple[int, int, int, int]
Point = tuple[float, float]
Box = tuple[float, float, float, float]

_SUPERSAMPLE = 2
MARGIN = 0.86
"""The part of its square an item fills, so a tilted item still fits."""


def darker(colour: RGB, factor: float = 0.62) -> RGB:
    """The colour with each channel scaled by `factor`: a shade of it."""
    r, g, b = (int(c * factor) for c in colour)
    return (r, g, b)


def luminance(colour: RGB) -> float:
    """How bright the colour looks, 0 to 255 (the ITU-R BT.601 weights)."""
    r, g, b = colour
    return 0.299 * r + 0.587 * g + 0.114 * b


def ellipse_points(box: Box, start: float = 0, end: float = 360, steps: int = 40) -> list[Point]:
    """Points along an ellipse, angles as Pillow counts them (clockwise from three o'clock)."""
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    if end < start:
        end += 360
    count = max(2, math.ceil(steps * (end - start) / 360))
    angles = (math.radians(start + (end - start) * n / count) for n in range(count + 1))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


def rounded_points(box: Box, radius: float) -> list[Point]:
    x0, y0, x1, y1 = box
    r = min(radius, (x1 - x0) / 2, (y1 - y0) / 2)
    corners = (
        (x1 - r, y1 - r, 0),
        (x0 + r, y1 - r, 90),
        (x0 + r, y0 + r, 180),
        (x1 - r, y0 + r, 270),
    )
    points: list[Point] = []
    for cx, cy, start in corners:
        points += ellipse_points((cx - r, cy - r, cx + r, cy + r), start, start + 90, 24)
    return points


class Sketch:
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
        self._rim: RGB = (0, 0, 0)
        self._front: list[Callable[[], None]] = []
        self.first_body: Sequence[Point] = ()
        """The first body part drawn, in unit coordinates: where a label can go."""

    def _xy(self, points: Sequence[Point], *, on_mask: bool = False) -> list[tuple[float, float]]:
        k = self._side * (_SUPERSAMPLE if on_mask else 1) / 100
        dx, dy = (0, 0) if on_mask else (self._left, self._top)
        c, s = self._cos * MARGIN, self._sin * MARGIN
        return [
            (
                dx + (50 + (x - 50) * c - (y - 50) * s) * k,
                dy + (50 + (x - 50) * s + (y - 50) * c) * k,
            )
            for x, y in points
        ]

    def _w(self, width: float, *, on_mask: bool = False) -> int:
        return max(1, round(width * self._side * (_SUPERSAMPLE if on_mask else 1) / 100 * MARGIN))

    def _later(self, behind: bool, draw: Callable[[], None]) -> None:
        if behind:
            draw()
        else:
            self._front.append(draw)

    def body(self, points: Sequence[Point], outline: RGB) -> None:
        xy = self._xy(points, on_mask=True)
        self._outer_draw.polygon(xy, fill=255)
        self._outer_draw.line([*xy, xy[0], xy[1]], 255, self._w(1.6, on_mask=True), "curve")
        self._inner_draw.polygon(xy, fill=255)
        self._rim = outline
        self.first_body = self.first_body or points

    def body_ellipse(self, box: Box, outline: RGB) -> None:
        self.body(ellipse_points(box), outline)

    def body_rounded(self, box: Box, radius: float, outline: RGB) -> None:
        self.body(rounded_points(box, radius), outline)

    def polygon(
        self,
        points: Sequence[Point],
        fill: RGB | RGBA,
        outline: RGB | None = None,
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
        self, points: Sequence[Point], fill: RGB | RGBA, width: float, *, behind: bool = False
    ) -> None:
        xy, pixels = self._xy(points), self._w(width)
        self._later(behind, lambda: self._canvas.line(xy, fill, pixels, "curve"))

    def ellipse(
        self, box: Box, fill: RGB | RGBA, outline: RGB | None = None, *, behind: bool = False
    ) -> None:
        self.polygon(ellipse_points(box), fill, outline, behind=behind)

    def rounded(
        self,
        box: Box,
        radius: float,
        fill: RGB | RGBA,
        outline: RGB | None = None,
        *,
        behind: bool = False,
    ) -> None:
        self.polygon(rounded_points(box, radius), fill, outline, behind=behind)

    def arc(
        self,
        box: Box,
        start: float,
        end: float,
        fill: RGB | RGBA,
        width: float,
        *,
        behind: bool = False,
    ) -> None:
        self.line(ellipse_points(box, start, end), fill, width, behind=behind)

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
