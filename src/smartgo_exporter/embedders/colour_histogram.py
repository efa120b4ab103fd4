"""The item's colours, the second part of a local embedding: a histogram of its own pixels.

The local embedder follows the network's features with this histogram (`embedders.local`),
because the network names things and hardly tells two navy shirts apart. Apart from the model
runner and from the preprocessing because it is neither: it reads the preprocessed pixels and
the item's mask (`preprocessing.decode_for_model`), and no model; and its bins are part of what
a vector is, so its length is in the embedder's `model_id`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

_HUES, _SATURATIONS, _VALUES, _GREYS = 12, 3, 3, 4
COLOUR_DIM = _HUES * _SATURATIONS * _VALUES + _GREYS
"""The histogram's length: 12 hues x 3 saturations x 3 values, and 4 greys."""
_GREY_SATURATION = 40
"""HSV saturation (of 255) below which a pixel counts as a grey, whatever its hue."""


def colour_histogram(pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
    """The item's colours in `decode_for_model`'s output (RGB + mask): unit length, 112 bins.

    12 hues x 3 saturations x 3 values, and 4 greys, square-rooted (so a small part, a label or
    a buckle, still counts) and normalised. The network is trained to name things, not to tell
    navy from black; two items of one kind differ most in their colours and how much of each.
    Only the item's pixels count, so the backdrop (whatever is left of it) does not.
    """
    reduced = np.ascontiguousarray(pixels[::4, ::4])  # 3,136 pixels make a steady histogram
    hsv = np.asarray(Image.fromarray(reduced[..., :3], "RGB").convert("HSV"), dtype=np.intp)
    item = hsv[reduced[..., 3] > 127]
    if len(item) == 0:
        return np.zeros(COLOUR_DIM, dtype=np.float32)
    hue, saturation, value = item[:, 0], item[:, 1], item[:, 2]
    strength = np.minimum(
        (saturation - _GREY_SATURATION) * _SATURATIONS // (256 - _GREY_SATURATION),
        _SATURATIONS - 1,
    )
    coloured = ((hue * _HUES // 256) * _SATURATIONS + strength) * _VALUES + value * _VALUES // 256
    grey = _HUES * _SATURATIONS * _VALUES + value * _GREYS // 256
    counts = np.bincount(
        np.where(saturation < _GREY_SATURATION, grey, coloured), minlength=COLOUR_DIM
    )
    rooted: NDArray[np.float32] = np.sqrt(counts.astype(np.float32))
    rooted /= np.float32(np.linalg.norm(rooted))
    return rooted
