"""Which local embedding finds the same item again from a new shot of it.

Run with the dev environment: `.venv/bin/python benchmarks/bench_embedding.py` (`--products 300`
for a quick run). The evaluation set is `pricing_data`'s: a stored photo per product (the
gallery) and new shots of the same item (the queries) over other backdrops, posed, lit and
encoded anew, among look-alikes of the same kind and colour. Each candidate embeds the gallery
and the queries; recall@k counts the queries whose own product is among the k nearest gallery
photos by cosine similarity (brute force). images/s is each preprocessing's decode + prepare +
model rate over the queries on every core (feature variants of one preprocessing share a run).

Candidates, by what the model sees and what the vector is made of:
- crop: the v1 `LocalEmbedder` recipe (short side to 256, centre 224), average-pooled;
- isolate-gradient: the backdrop as a gradient fitted to the border, the item where the photo
  differs from it, the item's box padded square on white (5% margin), then 224;
- isolate: the backdrop as the border's colours and darker copies of them (shadows), which a
  texture also matches; the item's holes filled; boxed as above;
- +white: the backdrop inside the box painted white too;
- +mirror: the model run on the input and its mirror image, features summed (twice the cost);
- +gem11: GeM (p=3) pooling of block 11's expansion (14x14x672) appended;
- gem-head: the head's activations GeM-pooled instead of averaged;
- +colour: a 112-bin hue/saturation/value histogram of the item's pixels appended (weight 0.4
  or 0.5, tuned on 400 products);
- LocalEmbedder (shipped, v2): the library's own `embed`, isolate gem-head +colour.

`--real` runs the same on scikit-image's bundled photos, each the gallery's only photo of
itself, with new shots made by the same augmentations (placement on another backdrop, tilt,
mirror, light, re-encoding): a check that what wins does not only work on drawings.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnx
import skimage.data
from numpy.typing import NDArray
from onnx import helper
from PIL import Image, ImageDraw, ImageFilter, ImageOps

import pricing_data
from smartgo_exporter.config import LocalEmbedderConfig
from smartgo_exporter.embedders.efficientnet_lite import FEATURES_NAME, INPUT_NAME, build_model
from smartgo_exporter.embedders.local import LocalEmbedder, _open_session, packaged_weights
from smartgo_exporter.embedders.torch_legacy import read_state_dict

SIZE = 224
GEM_TAP = "_blocks.11._expand_conv.out.relu6"
BATCH = 8
COLOUR_BINS = 112
REAL_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "clock",
    "cat",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "logo",
    "colorwheel",
)

Prepared = tuple[NDArray[np.uint8], NDArray[np.float32]] | None
"""(the model's 224x224 RGB input, the item's colour histogram), or None for a bad photo."""


GEM_TAPS = {"gem11": (GEM_TAP, 672), "gemhead": ("_conv_head.out.relu6", 1280)}


def session_with_gem() -> tuple[object, list[str]]:
    """The embedder's graph with more outputs: GeM (p=3) pooling of block 11's expansion and of
    the head, beside its average-pooled features."""
    model = build_model(read_state_dict(packaged_weights().read_bytes()))
    graph = model.graph
    three = helper.make_tensor("gem.p", onnx.TensorProto.FLOAT, [], [3.0])
    third = helper.make_tensor("gem.inv", onnx.TensorProto.FLOAT, [], [1 / 3])
    graph.initializer.extend([three, third])
    for name, (tap, channels) in GEM_TAPS.items():
        graph.node.extend(
            [
                helper.make_node("Pow", [tap, "gem.p"], [f"{name}.cubed"]),
                helper.make_node("GlobalAveragePool", [f"{name}.cubed"], [f"{name}.mean"]),
                helper.make_node("Pow", [f"{name}.mean", "gem.inv"], [f"{name}.root"]),
                helper.make_node("Flatten", [f"{name}.root"], [name], axis=1),
            ]
        )
        graph.output.append(
            helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", channels])
        )
    return _open_session(model.SerializeToString()), [FEATURES_NAME, *GEM_TAPS]


# Preprocessing


def prepare_crop(data: bytes) -> Prepared:
    """Today's (v1) recipe: the short side to 256, the centre 224."""
    try:
        image = decode_rgb(data, short_side=256)
    except Exception:
        return None
    scale = 256 / min(image.size)
    size = (max(SIZE, round(image.width * scale)), max(SIZE, round(image.height * scale)))
    left, top = (size[0] - SIZE) // 2, (size[1] - SIZE) // 2
    square = image.resize(size, Image.Resampling.BICUBIC).crop((left, top, left + SIZE, top + SIZE))
    pixels = np.asarray(square, dtype=np.uint8)
    return pixels, colour_histogram(pixels, np.ones(pixels.shape[:2], dtype=bool))


def embed_shipped(images: Sequence[bytes]) -> tuple[NDArray[np.float32], float]:
    """The shipped recipe, through `LocalEmbedder` itself: (vectors, images/s)."""
    embedder = LocalEmbedder(LocalEmbedderConfig())
    started = time.perf_counter()
    vectors = embedder.embed(images)
    rate = len(images) / (time.perf_counter() - started)
    width = embedder.dim
    rows = [v if isinstance(v, np.ndarray) else np.zeros(width, np.float32) for v in vectors]
    return np.stack(rows), rate


def decode_rgb(data: bytes, short_side: int = 336) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (short_side, short_side))
        upright = ImageOps.exif_transpose(image)
        if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
            rgba = upright.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return upright.convert("RGB")


def foreground_mask(small: NDArray[np.float32]) -> NDArray[np.bool_]:
    """Where a (small) photo differs from a backdrop gradient fitted to its border."""
    height, width, _ = small.shape
    rim = max(2, min(height, width) // 32)
    yy, xx = np.mgrid[0:height, 0:width]
    border = np.zeros((height, width), dtype=bool)
    border[:rim], border[-rim:], border[:, :rim], border[:, -rim:] = True, True, True, True
    design = np.stack([np.ones_like(xx), xx / width, yy / height], axis=-1).astype(np.float32)
    a, b = design[border], small[border]
    keep = np.ones(len(a), dtype=bool)
    for _ in range(2):  # refit without the border pixels the item itself covers
        coefficients, *_ = np.linalg.lstsq(a[keep], b[keep], rcond=None)
        residual = np.linalg.norm(b - a @ coefficients, axis=1)
        keep = residual <= max(6.0, float(np.percentile(residual, 80)) * 1.5)
    spread = float(np.percentile(residual[keep], 90))
    difference = np.linalg.norm(small - design @ coefficients, axis=-1)
    return difference > max(18.0, 2.5 * spread)


def backdrop_mask(small: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Where a (small) photo shows its backdrop: a colour its border has, or a shadow of one.

    The border's colours, binned 8 levels wide and widened by one bin, stand for the backdrop,
    so a gradient or a texture is backdrop wherever its colours recur; darker copies of them
    (half to nearly full brightness, the same hue) stand for the shadow the item casts.
    """
    height, width, _ = small.shape
    rim = max(2, min(height, width) // 32)
    border = np.concatenate(
        [
            small[:rim].reshape(-1, 3),
            small[-rim:].reshape(-1, 3),
            small[:, :rim].reshape(-1, 3),
            small[:, -rim:].reshape(-1, 3),
        ]
    ).astype(np.float32)
    known = np.zeros((34, 34, 34), dtype=bool)
    for shade in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5):
        bins = (border * shade // 8).astype(np.intp) + 1
        known[bins[:, 0], bins[:, 1], bins[:, 2]] = True
    widened = known.copy()
    for axis in range(3):
        widened |= np.roll(known, 1, axis) | np.roll(known, -1, axis)
    pixels = (small.astype(np.intp) // 8) + 1
    return widened[pixels[..., 0], pixels[..., 1], pixels[..., 2]]


def filled(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The mask with its holes filled: whatever the backdrop, reached from the border, is not."""
    padded = np.pad(~mask, 1, constant_values=True).astype(np.uint8) * 255
    outside = Image.fromarray(padded).copy()  # fromarray's image is a read-only view
    ImageDraw.floodfill(outside, (0, 0), 128)
    return (np.asarray(outside) != 128)[1:-1, 1:-1]


def isolate_by_border_colours(image: Image.Image) -> tuple[Image.Image, NDArray[np.bool_]]:
    """As `isolate_by_gradient`, with the backdrop taken as the border's colours and their
    shadows (what `LocalEmbedder` ships, written out here before it moved there)."""
    scale = 96 / max(image.size)
    small_size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
    small = np.asarray(image.resize(small_size, Image.Resampling.BOX), dtype=np.uint8)
    item = ~backdrop_mask(small)
    cleaned = Image.fromarray(item.astype(np.uint8) * 255).filter(ImageFilter.MedianFilter(3))
    mask = filled(np.asarray(cleaned) > 127)
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if mask.sum() < 0.01 * mask.size or len(rows) == 0:
        return isolate_by_gradient(image, False)
    kx, ky = image.width / small_size[0], image.height / small_size[1]
    box = (
        max(0, math.floor(columns[0] * kx)),
        max(0, math.floor(rows[0] * ky)),
        min(image.width, math.ceil((columns[-1] + 1) * kx)),
        min(image.height, math.ceil((rows[-1] + 1) * ky)),
    )
    cut = image.crop(box)
    cut_mask = Image.fromarray(mask.astype(np.uint8) * 255).resize(image.size).crop(box)
    side = round(max(cut.size) * 1.1)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas_mask = Image.new("L", (side, side), 0)
    at = ((side - cut.width) // 2, (side - cut.height) // 2)
    canvas.paste(cut, at)
    canvas_mask.paste(cut_mask, at)
    square = canvas.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return square, np.asarray(canvas_mask.resize((SIZE, SIZE))) > 127


def prepare_isolate_by_border_colours(data: bytes) -> Prepared:
    try:
        image = decode_rgb(data)
    except Exception:
        return None
    square, mask = isolate_by_border_colours(image)
    pixels = np.asarray(square, dtype=np.uint8)
    return pixels, colour_histogram(pixels, mask)


def isolate_by_gradient(image: Image.Image, whiten: bool) -> tuple[Image.Image, NDArray[np.bool_]]:
    """The item cut to its bounding box and padded square on white; and its mask there."""
    scale = 96 / max(image.size)
    small_size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
    small = np.asarray(image.resize(small_size, Image.Resampling.BOX), dtype=np.float32)
    mask = foreground_mask(small)
    cleaned = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MedianFilter(3))
    mask = np.asarray(cleaned) > 127
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if mask.sum() < 0.01 * mask.size or len(rows) == 0:
        box = (0, 0, image.width, image.height)
        mask = np.ones((image.height, image.width), dtype=bool)
        whiten = False
    else:
        kx, ky = image.width / small_size[0], image.height / small_size[1]
        box = (
            max(0, math.floor(columns[0] * kx)),
            max(0, math.floor(rows[0] * ky)),
            min(image.width, math.ceil((columns[-1] + 1) * kx)),
            min(image.height, math.ceil((rows[-1] + 1) * ky)),
        )
    item = image.crop(box)
    item_mask = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        image.size, Image.Resampling.BILINEAR
    )
    item_mask = item_mask.crop(box)
    if whiten:
        soft = item_mask.filter(ImageFilter.MaxFilter(5)).filter(ImageFilter.BoxBlur(2))
        item = Image.composite(item, Image.new("RGB", item.size, (255, 255, 255)), soft)
    side = round(max(item.size) * 1.1)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas_mask = Image.new("L", (side, side), 0)
    at = ((side - item.width) // 2, (side - item.height) // 2)
    canvas.paste(item, at)
    canvas_mask.paste(item_mask, at)
    square = canvas.resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return square, np.asarray(canvas_mask.resize((SIZE, SIZE))) > 127


def make_isolating(whiten: bool) -> Callable[[bytes], Prepared]:
    def prepare(data: bytes) -> Prepared:
        try:
            image = decode_rgb(data)
        except Exception:
            return None
        square, mask = isolate_by_gradient(image, whiten)
        pixels = np.asarray(square, dtype=np.uint8)
        return pixels, colour_histogram(pixels, mask)

    return prepare


def colour_histogram(pixels: NDArray[np.uint8], mask: NDArray[np.bool_]) -> NDArray[np.float32]:
    """12 hues x 3 saturations x 3 values of the item's pixels, plus 4 greys; sqrt-normalised."""
    hsv = np.asarray(Image.fromarray(pixels).convert("HSV"), dtype=np.int32)[mask]
    if len(hsv) == 0:
        hsv = np.asarray(Image.fromarray(pixels).convert("HSV"), dtype=np.int32).reshape(-1, 3)
    hue, saturation, value = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    grey = saturation < 40
    coloured = (hue * 12 // 256) * 9 + np.minimum((saturation - 40) * 3 // 216, 2) * 3
    coloured = coloured + value * 3 // 256
    bins = np.where(grey, 108 + value * 4 // 256, coloured)
    counts = np.bincount(bins, minlength=COLOUR_BINS).astype(np.float32)
    counts = np.sqrt(counts / max(1.0, counts.sum()))
    return counts / max(1e-6, float(np.linalg.norm(counts)))


# Embedding


@dataclass(frozen=True)
class Features:
    parts: dict[str, NDArray[np.float32]]
    """Each output, L2-normalised: "avg" (today's), "gem11", "gemhead", "colour"."""
    images_per_second: float


def run_model(
    session: object,
    outputs: list[str],
    images: Sequence[bytes],
    prepare: Callable[[bytes], Prepared],
    mirror: bool = False,
) -> Features:
    """Decode, prepare and embed `images` on every core, as the embedder does."""

    def batch(start: int) -> list[list[NDArray[np.float32]]]:
        prepared = [prepare(data) for data in images[start : start + BATCH]]
        pixels = [p[0] if p is not None else np.zeros((SIZE, SIZE, 3), np.uint8) for p in prepared]
        colours = [p[1] if p is not None else np.zeros(COLOUR_BINS, np.float32) for p in prepared]
        tensor = np.stack(pixels).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        tensor = np.ascontiguousarray(tensor.transpose(0, 3, 1, 2))
        results = session.run(outputs, {INPUT_NAME: tensor})  # type: ignore[attr-defined]
        if mirror:
            flipped = np.ascontiguousarray(tensor[:, :, :, ::-1])
            again = session.run(outputs, {INPUT_NAME: flipped})  # type: ignore[attr-defined]
            results = [one + other for one, other in zip(results, again, strict=True)]
        return [list(result) for result in results] + [colours]

    started = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        batches = list(pool.map(batch, range(0, len(images), BATCH)))
    elapsed = time.perf_counter() - started
    names = ["avg", *outputs[1:], "colour"]
    return Features(
        parts={
            name: normalised(np.stack([row for part in batches for row in part[n]]))
            for n, name in enumerate(names)
        },
        images_per_second=len(images) / elapsed,
    )


def normalised(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def combine(features: Features, weights: dict[str, float]) -> NDArray[np.float32]:
    """The weighted parts side by side, re-normalised."""
    parts = [features.parts[name] * np.float32(weight) for name, weight in weights.items()]
    return normalised(np.concatenate(parts, axis=1))


def recalls(
    gallery: NDArray[np.float32], queries: NDArray[np.float32], truth: NDArray[np.int64]
) -> tuple[float, float, float]:
    """recall@1, @5, @10: how often the query's own gallery photo is among its k nearest."""
    hits = np.zeros(3)
    for start in range(0, len(queries), 1024):
        similarity = queries[start : start + 1024] @ gallery.T
        own = similarity[np.arange(len(similarity)), truth[start : start + 1024]]
        rank = (similarity > own[:, None]).sum(axis=1)
        hits += [(rank < k).sum() for k in (1, 5, 10)]
    r1, r5, r10 = hits / len(queries)
    return float(r1), float(r5), float(r10)


# The real photos


def real_photo_set(shots: int, seed: int) -> tuple[list[bytes], list[bytes], list[int]]:
    """scikit-image's photos as the gallery; new shots of each as the queries."""
    gallery, queries, truth = [], [], []
    for index, name in enumerate(REAL_PHOTOS):
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        photo.thumbnail((560, 560))
        gallery.append(pricing_data.encode_photo(photo, "JPEG", 86))
        for n in range(shots):
            rng = random.Random(f"real:{seed}:{name}:{n}")
            queries.append(pricing_data.reshoot(photo, rng))
            truth.append(index)
    return gallery, queries, truth


# The run


AVG = {"avg": 1.0}
SHIPPED = "LocalEmbedder (shipped, v2)"
HEAD_COLOUR = {"gemhead": 1.0, "colour": 0.5}
CANDIDATES: tuple[tuple[str, str, bool, dict[str, float]], ...] = (
    # (name, preprocessing, mirror-averaged, {part: weight})
    ("crop (today)", "crop", False, AVG),
    ("crop +colour", "crop", False, {"avg": 1.0, "colour": 0.4}),
    ("isolate-gradient", "isolate-gradient", False, AVG),
    ("isolate-gradient +colour", "isolate-gradient", False, {"avg": 1.0, "colour": 0.5}),
    ("isolate", "isolate", False, AVG),
    ("isolate +gem11", "isolate", False, {"avg": 1.0, "gem11": 1.0}),
    ("isolate +colour", "isolate", False, {"avg": 1.0, "colour": 0.4}),
    ("isolate +gem11 +colour", "isolate", False, {"avg": 1.0, "gem11": 1.0, "colour": 0.4}),
    ("isolate gem-head", "isolate", False, {"gemhead": 1.0}),
    ("isolate gem-head +colour", "isolate", False, HEAD_COLOUR),
    ("isolate+white gem-head +colour", "isolate-gradient+white", False, HEAD_COLOUR),
    ("isolate gem-head +colour +mirror", "isolate +mirror", True, HEAD_COLOUR),
)
"""Colour weights were tuned on 400 products of seed 0 (0.3-1.2 tried), GeM weight 0.5-1."""
EXPENSIVE = {"isolate +mirror", "isolate-gradient+white"}
PREPARE: dict[str, Callable[[bytes], Prepared]] = {
    "crop": prepare_crop,
    "isolate-gradient": make_isolating(whiten=False),
    "isolate-gradient+white": make_isolating(whiten=True),
    "isolate": prepare_isolate_by_border_colours,
    "isolate +mirror": prepare_isolate_by_border_colours,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=pricing_data.DEFAULT_PRODUCTS)
    parser.add_argument("--shots", type=int, default=pricing_data.DEFAULT_SHOTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", action="store_true", help="scikit-image's photos instead")
    parser.add_argument("--only", nargs="*", help="run only the candidates of these names")
    parser.add_argument(
        "--all", action="store_true", help="also the mirror-averaged and whitened candidates"
    )
    arguments = parser.parse_args()

    started = time.perf_counter()
    if arguments.real:
        gallery, queries, truth_list = real_photo_set(max(arguments.shots, 8), arguments.seed)
        print(f"{len(gallery)} scikit-image photos, {len(queries)} new shots")
    else:
        products = pricing_data.build_products(arguments.products, arguments.seed)
        photos = pricing_data.render_photos(products, arguments.shots)
        gallery = [p.stored for p in photos]
        queries = [shot for p in photos for shot in p.shots]
        truth_list = [i for i, p in enumerate(photos) for _ in p.shots]
        pairs = len({(p.kind, p.colour) for p in products})
        print(
            f"{len(products)} products ({pairs} kind+colour pairs, "
            f"{len({p.family for p in products})} families), {len(queries)} new shots, "
            f"seed {arguments.seed}; photos made in {time.perf_counter() - started:.0f} s"
        )
    truth = np.asarray(truth_list)
    session, outputs = session_with_gem()
    chosen = [
        c
        for c in CANDIDATES
        if (c[0] in arguments.only if arguments.only else arguments.all or c[1] not in EXPENSIVE)
    ]
    runs: dict[str, tuple[Features, Features]] = {}
    print(f"{'candidate':36} {'recall@1':>9} {'@5':>7} {'@10':>7} {'images/s':>9}")
    if not arguments.only or SHIPPED in arguments.only:
        stored_vectors, _ = embed_shipped(gallery)
        shot_vectors, rate = embed_shipped(queries)
        r1, r5, r10 = recalls(stored_vectors, shot_vectors, truth)
        print(f"{SHIPPED:36} {r1:9.1%} {r5:7.1%} {r10:7.1%} {rate:9.1f}", flush=True)
    for name, preprocessing, mirror, weights in chosen:
        if preprocessing not in runs:
            prepare = PREPARE[preprocessing]
            runs[preprocessing] = (
                run_model(session, outputs, gallery, prepare, mirror),
                run_model(session, outputs, queries, prepare, mirror),
            )
        stored, shots = runs[preprocessing]
        r1, r5, r10 = recalls(
            combine(stored, weights),
            combine(shots, weights),
            truth,
        )
        print(
            f"{name:36} {r1:9.1%} {r5:7.1%} {r10:7.1%} {shots.images_per_second:9.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
