"""How each kind of item the demo sells is drawn: its body, its parts and where they go.

There is a drawing for every key of `demo.shops.STYLES`: it lays the item's body and parts onto
a `Sketch` in the product's `Look` (`demo.looks`), and `draw_kind` then fills the body with its
fabric. Apart from the photos (`demo.photos`) because this is what an item looks like, whatever
photo it is drawn into: the demo's own photos and the benchmarks' new shots of an item both
draw it with these.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from PIL import Image

from smartgo_exporter.demo.looks import Look, fabric
from smartgo_exporter.demo.plan import DemoProduct
from smartgo_exporter.demo.sketch import (
    RGB,
    RGBA,
    Sketch,
    darker,
    ellipse_points,
    luminance,
)

_SHADE: RGBA = (0, 0, 0, 34)
_WOOD: RGB = (156, 114, 72)


def _hanger(s: Sketch) -> None:
    s.arc((45, -3, 55, 7), 180, 90, (150, 150, 155), 1.4, behind=True)
    s.line([(50, 6), (24, 16), (76, 16), (50, 6)], _WOOD, 2.2, behind=True)


def _draw_handbag(s: Sketch, look: Look) -> None:
    s.arc((28, 10 - 8 * look.shape, 72, 62), 180, 360, look.trim, 5, behind=True)
    s.body([(14, 40), (86, 40), (93, 90), (7, 90)], look.trim)
    s.polygon([(14, 40), (86, 40), (81, 63), (19, 63)], _SHADE, look.trim)
    s.rounded((45, 57, 55, 68), 2, look.accent, darker(look.accent))
    s.line([(10, 86), (90, 86)], _SHADE, 1)


def _draw_tote(s: Sketch, look: Look) -> None:
    lift = 6 * look.shape
    s.arc((26, 10 - lift, 66, 58 + lift), 180, 360, darker(look.trim, 0.8), 3.5, behind=True)
    s.arc((34, 8 - lift, 74, 60 + lift), 180, 360, look.trim, 3.5, behind=True)
    s.body([(14, 34), (86, 34), (88, 93), (12, 93)], look.trim)
    s.line([(14, 40), (86, 40)], look.trim, 1)


def _draw_crossbody(s: Sketch, look: Look) -> None:
    s.arc((16, -8 + 6 * look.shape, 84, 72), 180, 360, look.trim, 2.5, behind=True)
    s.body_rounded((18, 42, 82, 86), 8, look.trim)
    s.polygon([(19, 50), (81, 50), (81, 66), (50, 73), (19, 66)], _SHADE, look.trim)
    s.ellipse((46.5, 65, 53.5, 72), look.accent, darker(look.accent))


def _draw_sneakers(s: Sketch, look: Look) -> None:
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
    stripe = look.contrast if luminance(look.base) < 150 else (30, 40, 70)
    s.line([(30, 68), (52, 58), (74, 60)], stripe, 3.2)
    s.arc((74, 52, 104, 86), 250, 330, look.trim, 1)
    s.rounded((5, 72, 97, 84), 5, look.accent, darker(look.accent, 0.8))


def _draw_boots(s: Sketch, look: Look) -> None:
    s.rounded((34, 0, 44, 12), 2, look.trim, behind=True)
    s.body(
        [(30, 6), (58, 6), (60, 54), (72, 58), (88, 63), (95, 71), (95, 80), (28, 80)], look.trim
    )
    s.polygon([(44, 24), (56, 24), (58, 55), (46, 53)], darker(look.base, 0.72), look.trim)
    s.rounded((26, 79, 97, 87), 2, (42, 34, 30))
    s.polygon([(28, 84), (42, 84), (42, 93), (30, 93)], (42, 34, 30))


def _draw_dress(s: Sketch, look: Look) -> None:
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


def _draw_tshirt(s: Sketch, look: Look) -> None:
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


def _draw_shirt(s: Sketch, look: Look) -> None:
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


def _draw_jacket(s: Sketch, look: Look) -> None:
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
    lapel = darker(look.base, 0.82)
    s.polygon([(42, 6), (50, 30), (44, 40), (35, 13)], lapel, look.trim)
    s.polygon([(58, 6), (50, 30), (56, 40), (65, 13)], lapel, look.trim)
    s.line([(50, 30), (50, 95)], look.accent, 1.1)
    s.polygon([(29, 62), (44, 62), (44, 67), (29, 67)], lapel, look.trim)
    s.polygon([(56, 62), (71, 62), (71, 67), (56, 67)], lapel, look.trim)
    s.line([(5, 79), (16, 83)], look.trim, 1)
    s.line([(95, 79), (84, 83)], look.trim, 1)


def _draw_jeans(s: Sketch, look: Look) -> None:
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


def _draw_chinos(s: Sketch, look: Look) -> None:
    s.body([(27, 6), (73, 6), (77, 96), (55, 96), (50, 32), (45, 96), (23, 96)], look.trim)
    s.line([(27, 12), (73, 12)], look.trim, 1)
    s.line([(36, 14), (34, 94)], _SHADE, 0.8)
    s.line([(64, 14), (66, 94)], _SHADE, 0.8)
    s.line([(28, 14), (36, 26)], look.trim, 0.8)
    s.line([(72, 14), (64, 26)], look.trim, 0.8)


def _draw_fedora(s: Sketch, look: Look) -> None:
    s.body_ellipse((4, 58 + 2 * look.shape, 96, 82), look.trim)
    s.body([(24, 70), (28, 32), (40, 24), (50, 30), (60, 24), (72, 32), (76, 70)], look.trim)
    s.polygon([(25.5, 56), (74.5, 56), (75.3, 65), (24.7, 65)], darker(look.base, 0.45))
    s.line([(50, 31), (50, 52)], _SHADE, 1)


def _draw_beanie(s: Sketch, look: Look) -> None:
    s.ellipse((40, 2, 60, 22), look.contrast, darker(look.contrast, 0.85), behind=True)
    s.body([*ellipse_points((18, 14, 82, 98), 180, 360, 48), (82, 88), (18, 88)], look.trim)
    s.line([(18, 64), (82, 64)], look.trim, 1)
    for x in range(21, 81, 4):
        s.line([(x, 66), (x, 86)], _SHADE, 0.8)


def _draw_watch(s: Sketch, look: Look) -> None:
    s.body_rounded((37, 0, 63, 100), 4, look.trim)
    for y in (86, 92):
        s.ellipse((48.6, y - 1.4, 51.4, y + 1.4), look.trim)
    s.rounded((75, 50, 82, 58), 1, look.accent, darker(look.accent), behind=True)
    s.ellipse((23, 27, 77, 81), look.accent, darker(look.accent))
    s.ellipse((28.5, 32.5, 71.5, 75.5), look.detail)
    ink = (30, 30, 34) if luminance(look.detail) > 128 else (236, 236, 232)
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


def _draw_sunglasses(s: Sketch, look: Look) -> None:
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


_DRAWINGS: dict[str, Callable[[Sketch, Look], None]] = {
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


def draw_kind(
    photo: Image.Image,
    product: DemoProduct,
    look: Look,
    box: tuple[int, int, int],
    angle: float,
    step: float,
) -> Sketch:
    """Draw the product's item onto `photo` in the square `box` (left, top, side), tilted by
    `angle` degrees, its pattern `step` pixels wide; the sketch says where its body is."""
    left, top, side = box
    sketch = Sketch(photo, left, top, side, angle)
    _DRAWINGS[product.style](sketch, look)
    sketch.finish(fabric(side, look, product.pattern, angle, step))
    return sketch
