"""What the local model sees of a photo: decoded, the item cut out of its backdrop, 224x224.

`decode_for_model` cuts the item out of its backdrop when the photo has one (`isolate_item`),
so that it reaches the network the same size and place in every shot of it. A photo with no
plain backdrop (a street, a close-up) is made square by `fit` instead:
- "crop" (default) scales the short side to 256 and cuts out the centre 224x224, the recipe the
  network was trained with; it slices the ends off long items, but an item keeps its size
  whatever the photo's shape;
- "pad" pads it on white and shrinks it to 224x224, so the whole item is seen, smaller the
  further the photo is from square.
benchmarks/bench_fit.py measured both under v1: crop finds the same product first about twice
as often (68% against 35%), and three times as often when the new photo has another shape than
the stored one; pad is ahead only when both photos are square (77% against 65%).

Apart from the model runner (`embedders.local`) because none of it needs the model (the
benchmarks time decoding on its own), and because a change here moves every vector without
any change of weights: it is one of the preprocessing (`local.PREPROCESSING_VERSION`).
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter, ImageOps

from smartgo_exporter.embedders.rgb import to_rgb
from smartgo_exporter.errors import EmbeddingError

DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's own decompression-bomb threshold; a photo with more pixels is not decoded at all."""

_SIZE = 224
_CROP_SHORT_SIDE = 256
_DRAFT_SHORT_SIDE = 336
"""JPEG draft mode keeps at least this short side: an item filling half the photo still comes
out at about the model's size once it is cut out."""
_WHITE = (255, 255, 255)

_MASK_SIDE = 96
"""The most the long side of the copy in which the backdrop is found has: enough to place an
item, and cheap."""
_BIN = 8
"""Colour levels per bin when matching the border's colours: JPEG noise and gradients fit."""
_SHADOW_SHADES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
"""A shadow keeps the backdrop's hue at half to nearly full brightness."""
_PLAIN_BORDER_BINS = 120
"""At most this many colour bins on the border make a backdrop: the evaluation set's walls,
gradients and textures take 10 (median) to 91, scikit-image's colour photos 146 to 331."""
_MIN_ITEM = 0.01
"""Below this part of the photo, what differs from the border is noise, not an item."""
_WHOLE = 0.9
"""A box this close to the whole photo, both ways, means it has no plain backdrop to cut away
(its border always counts as backdrop, so even a whole-photo box falls a little short)."""
_ITEM_MARGIN = 1.1
"""The square around an item: its longer side and 5% each side."""

Fit = Literal["pad", "crop"]


def decode_for_model(
    data: bytes, fit: Fit, max_pixels: int = DEFAULT_MAX_PIXELS, *, draft: bool = True
) -> NDArray[np.uint8] | EmbeddingError:
    """The photo as the model sees it, (224, 224, 4) bytes: RGB, then 255 where the item is.

    The item is cut out of its backdrop when it has one (`isolate_item`): its box, padded
    square on white. A photo with no plain backdrop (a street, a close-up) is made square by
    `fit`, and all of it counts as the item.

    Never raises for bad input: one unreadable photo must cost one slot, not the batch.
    `draft=False` decodes JPEGs at full size first, only so that the benchmark can show what
    draft mode changes (benchmarks/bench_export.py).
    """
    if not data:
        return EmbeddingError("decode_failed", "empty image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                return EmbeddingError(
                    "too_many_pixels", f"{width}x{height} is over the limit of {max_pixels}"
                )
            if draft:
                # libjpeg scales by 1/2, 1/4 or 1/8 while decoding, keeping both sides at least
                # this large: enough for a crop (256) and for an item cut out of the photo.
                image.draft("RGB", (_DRAFT_SHORT_SIDE, _DRAFT_SHORT_SIDE))
            upright = to_rgb(ImageOps.exif_transpose(image))
            isolated = isolate_item(upright)
            if isolated is None:
                square = _square(upright, fit)
                mask = np.full((_SIZE, _SIZE), 255, dtype=np.uint8)
            else:
                square, mask = isolated
            return np.dstack([np.asarray(square, dtype=np.uint8), mask])
    except Image.DecompressionBombError as error:
        return EmbeddingError("too_many_pixels", str(error))
    except Exception as error:  # Pillow's many decoders fail in many ways; one photo, one slot
        return EmbeddingError("decode_failed", f"{type(error).__name__}: {error}")


def isolate_item(photo: Image.Image) -> tuple[Image.Image, NDArray[np.uint8]] | None:
    """The item cut out of its backdrop, 224x224 RGB on white, and where it is (255) in it.

    A new shot of an item differs from the stored one mostly around the item: another backdrop,
    another place and size in the frame. Cut to its box and scaled to fill the square, the
    item reaches the network the same size and place in both, with nothing behind it that
    differs. The backdrop is what has the colours of the photo's border, or a shadow of them
    (`_backdrop_mask`), so a plain wall, a gradient or a texture all go. None when the border
    is too varied to be a backdrop (a street, a close-up), nothing stands out of it, or the box
    is about the whole photo.
    """
    # Averaging blocks of whole pixels is the cheapest reduction Pillow has: a third of a resize.
    small = np.asarray(photo.reduce(max(1, -(-max(photo.size) // _MASK_SIDE))), dtype=np.uint8)
    if min(small.shape[:2]) < 8:
        return None
    backdrop = _backdrop_mask(small)
    if backdrop is None:
        return None
    item = Image.fromarray((~backdrop).astype(np.uint8) * 255)
    mask = _filled(np.asarray(item.filter(ImageFilter.MedianFilter(3))) > 127)
    if mask.mean() < _MIN_ITEM:
        return None
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, columns[0], columns[-1] + 1
    height, width = mask.shape
    if bottom - top >= _WHOLE * height and right - left >= _WHOLE * width:
        return None
    kx, ky = photo.width / width, photo.height / height
    box = (
        int(left * kx),
        int(top * ky),
        min(photo.width, round(right * kx)),
        min(photo.height, round(bottom * ky)),
    )
    shrink = _SIZE / (max(box[2] - box[0], box[3] - box[1]) * _ITEM_MARGIN)
    size = (max(1, round((box[2] - box[0]) * shrink)), max(1, round((box[3] - box[1]) * shrink)))
    at = ((_SIZE - size[0]) // 2, (_SIZE - size[1]) // 2)
    square = Image.new("RGB", (_SIZE, _SIZE), _WHITE)
    square.paste(photo.resize(size, Image.Resampling.BICUBIC, box=box), at)
    where = Image.new("L", (_SIZE, _SIZE), 0)
    cut = Image.fromarray(mask[top:bottom, left:right].astype(np.uint8) * 255)
    where.paste(cut.resize(size, Image.Resampling.NEAREST), at)
    return square, np.asarray(where, dtype=np.uint8)


def _backdrop_mask(small: NDArray[np.uint8]) -> NDArray[np.bool_] | None:
    """Where a (small) photo shows its backdrop: a colour its border has, or a shadow of one;
    None when its border has too many colours to be a backdrop.

    The border's colours, binned `_BIN` levels wide and widened by a bin, stand for the
    backdrop wherever they recur, which a gradient's and a texture's do; darker copies of them
    at the same hue stand for the shadow an item casts.
    """
    rim = max(2, min(small.shape[:2]) // 32)
    border = np.concatenate(
        [
            small[:rim].reshape(-1, 3),
            small[-rim:].reshape(-1, 3),
            small[:, :rim].reshape(-1, 3),
            small[:, -rim:].reshape(-1, 3),
        ]
    ).astype(np.float32)
    levels = 256 // _BIN + 2
    plain = border.astype(np.intp) // _BIN
    if len(np.unique((plain[:, 0] * levels + plain[:, 1]) * levels + plain[:, 2])) > (
        _PLAIN_BORDER_BINS
    ):
        return None
    known = np.zeros((levels, levels, levels), dtype=bool)
    for shade in _SHADOW_SHADES:
        bins = (border * np.float32(shade)).astype(np.intp) // _BIN + 1
        known[bins[:, 0], bins[:, 1], bins[:, 2]] = True
    widened = known.copy()
    for axis in range(3):
        widened |= np.roll(known, 1, axis) | np.roll(known, -1, axis)
    bins = small.astype(np.intp) // _BIN + 1
    return widened[bins[..., 0], bins[..., 1], bins[..., 2]]


def _filled(item: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The item with its holes filled: all but the backdrop that the border reaches.

    A white item on a white wall keeps its white inside, which its outline encloses.
    """
    backdrop = ~item
    outside = np.zeros_like(item)
    outside[[0, -1], :] = backdrop[[0, -1], :]
    outside[:, [0, -1]] = backdrop[:, [0, -1]]
    while True:
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= backdrop
        if np.array_equal(grown, outside):
            return ~outside
        outside = grown


def _square(image: Image.Image, fit: Fit) -> Image.Image:
    width, height = image.size
    if fit == "crop":
        scale = _CROP_SHORT_SIDE / min(width, height)
        size = (max(_SIZE, round(width * scale)), max(_SIZE, round(height * scale)))
        resized = image.resize(size, Image.Resampling.BICUBIC)
        left, top = (size[0] - _SIZE) // 2, (size[1] - _SIZE) // 2
        return resized.crop((left, top, left + _SIZE, top + _SIZE))
    # Shrinking before padding equals padding then shrinking, at a fraction of the pixels, and
    # keeps the white border from bleeding into the photo's edge.
    scale = _SIZE / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = image.resize(size, Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (_SIZE, _SIZE), _WHITE)
    canvas.paste(resized, ((_SIZE - size[0]) // 2, (_SIZE - size[1]) // 2))
    return canvas
