"""Pad or crop: which way of making a photo square serves the local embedder better.

Run with the dev environment: `.venv/bin/python benchmarks/bench_fit.py`. `LocalEmbedder` makes
each photo square before the model sees it: fit="pad" pads it on white and shrinks it to 224,
so the whole item is seen; fit="crop" scales the short side to 256 and cuts the centre 224, the
ImageNet recipe. Two measurements, each under both fits:

1. Retrieval, what the embeddings are for ("find sold items that look like this new one"). The
   gallery is the demo store's own product photos (`smartgo_exporter.demo`, drawn in a temp
   dir, no server). Each product's query is a second shot of the same item: its photo placed on
   a canvas of another shape (square, wide 4:3, wide 16:9, tall 3:4) over its own backdrop
   colour, scaled and shifted a little and saved as a lower-quality JPEG. Recall@1 counts the
   queries whose nearest gallery photo is the same product; "kind+colour in top 5" counts, of
   the five nearest, those of the query's kind and colour (the best possible is under 5 when
   fewer products share them).
2. Classification of real photos, scikit-image's bundled samples (nothing is downloaded), whose
   ImageNet classes are known: top-1 and top-5 hits and the rank of the right class, on
   the photo as it is and placed on a white canvas twice as wide or twice as tall, as product
   photos often are.

Everything is seeded: the same arguments print the same figures.
"""

from __future__ import annotations

import argparse
import io
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

import numpy as np
import skimage.data
from numpy.typing import NDArray
from PIL import Image

from smartgo_exporter.config import LocalEmbedderConfig
from smartgo_exporter.demo.photos import render_photos
from smartgo_exporter.demo.plan import DEFAULT_SEED, DemoProduct, PhotoState, plan_demo
from smartgo_exporter.embedders.local import LocalEmbedder
from smartgo_exporter.embedders.preprocessing import Fit

FITS: tuple[Fit, ...] = ("pad", "crop")
CANVASES = {"square 1:1": 1.0, "wide 4:3": 4 / 3, "wide 16:9": 16 / 9, "tall 3:4": 3 / 4}
"""Width / height of the query's canvas; queries take them in turn."""
QUERY_HEIGHT = 600
"""The canvas's height in pixels for a wide or square canvas; its width for a tall one."""

TABBY, TIGER_CAT, EGYPTIAN_CAT = 281, 282, 285
ESPRESSO, CUP, COFFEE_MUG = 967, 968, 504
MISSILE, PROJECTILE, SPACE_SHUTTLE = 657, 744, 812
POLAROID_CAMERA, REFLEX_CAMERA, TRIPOD = 732, 759, 872
ANALOG_CLOCK, WALL_CLOCK = 409, 892
LABELLED_PHOTOS: dict[str, tuple[Callable[[], NDArray[np.uint8]], set[int]]] = {
    "chelsea": (skimage.data.chelsea, {TABBY, TIGER_CAT, EGYPTIAN_CAT}),
    "coffee": (skimage.data.coffee, {ESPRESSO, CUP, COFFEE_MUG}),
    "rocket": (skimage.data.rocket, {MISSILE, PROJECTILE, SPACE_SHUTTLE}),
    "camera": (skimage.data.camera, {POLAROID_CAMERA, REFLEX_CAMERA, TRIPOD}),
    "clock": (skimage.data.clock, {ANALOG_CLOCK, WALL_CLOCK}),
}
"""The bundled samples with an ImageNet class; `camera` is grey, `clock` is motion-blurred."""
WHITE = (255, 255, 255)


def jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def place(
    photo: Image.Image,
    size: tuple[int, int],
    backdrop: tuple[int, int, int],
    fill: float = 1.0,
    shift: tuple[float, float] = (0.0, 0.0),
) -> Image.Image:
    """`photo` scaled to `fill` of what fits in a canvas of `size`, centred, then moved by
    `shift` (fractions of the canvas) as far as the canvas allows."""
    width, height = size
    scale = fill * min(width / photo.width, height / photo.height)
    scaled = photo.resize(
        (max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
        Image.Resampling.LANCZOS,
    )
    left = (width - scaled.width) / 2 + shift[0] * width
    top = (height - scaled.height) / 2 + shift[1] * height
    canvas = Image.new("RGB", size, backdrop)
    canvas.paste(
        scaled,
        (
            round(min(max(0, left), width - scaled.width)),
            round(min(max(0, top), height - scaled.height)),
        ),
    )
    return canvas


def backdrop_of(photo: Image.Image) -> tuple[int, int, int]:
    """The median colour of the photo's border: the studio backdrop it was shot on."""
    pixels = np.asarray(photo)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    r, g, b = (int(v) for v in np.median(border, axis=0))
    return r, g, b


def as_rgb(data: bytes) -> Image.Image:
    """A stored photo as RGB; a cut-out (transparent) one on white, as the embedder sees it."""
    with Image.open(io.BytesIO(data)) as image:
        rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*WHITE, 255)), rgba).convert("RGB")


def second_shot(stored: bytes, canvas: str, rng: random.Random) -> bytes:
    """A new listing of the same item: another canvas shape, a little scaled and shifted."""
    photo = as_rgb(stored)
    aspect = CANVASES[canvas]
    size = (
        (round(QUERY_HEIGHT * aspect), QUERY_HEIGHT)
        if aspect >= 1
        else (QUERY_HEIGHT, round(QUERY_HEIGHT / aspect))
    )
    fill = rng.uniform(0.8, 1.0)
    shift = (rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05))
    return jpeg(place(photo, size, backdrop_of(photo), fill, shift), rng.randint(60, 75))


def demo_products(count: int, seed: int) -> tuple[list[DemoProduct], list[bytes]]:
    """`count` products of the demo store (seeded pick) and their photos as the store has them."""
    catalog = plan_demo(first_day=date(2026, 11, 2))
    with_photo = [p for p in catalog.products if p.photo is PhotoState.OK]
    chosen = random.Random(seed).sample(with_photo, min(count, len(with_photo)))
    with tempfile.TemporaryDirectory() as folder:
        paths = render_photos(Path(folder), chosen, seed=DEFAULT_SEED)
        by_name = {path.name: path.read_bytes() for path in paths}
    chosen.sort(key=lambda p: p.photo_name or "")
    return chosen, [by_name[p.photo_name or ""] for p in chosen]


def unit_vectors(embedder: LocalEmbedder, photos: Sequence[bytes]) -> NDArray[np.float32]:
    vectors = [v for v in embedder.embed(photos) if isinstance(v, np.ndarray)]
    if len(vectors) != len(photos):
        raise SystemExit(f"{len(photos) - len(vectors)} photos failed to embed")
    return np.stack(vectors)


def retrieval(
    gallery: NDArray[np.float32], queries: NDArray[np.float32], looks: Sequence[tuple[str, str]]
) -> tuple[NDArray[np.bool_], NDArray[np.int64]]:
    """Per query: is its nearest photo its own product's, and how many of the top 5 share its
    (kind, colour). Query n is a second shot of gallery photo n."""
    nearest = np.argsort(-(queries @ gallery.T), axis=1)[:, :5]
    hits = nearest[:, 0] == np.arange(len(queries))
    alike = np.array(
        [sum(looks[j] == looks[n] for j in row) for n, row in enumerate(nearest)], dtype=np.int64
    )
    return hits, alike


def right_class_rank(embedder: LocalEmbedder, photo: bytes, classes: set[int]) -> int:
    """1 when a right class comes first, 5 when the best of them is fifth, and so on."""
    [ranked] = embedder.classify([photo], top=1000)
    return next(n for n, (index, _) in enumerate(ranked, 1) if index in classes)


def real_photo_versions() -> dict[str, dict[str, bytes]]:
    """Per version (original, wide, tall), each labelled sample as a PNG."""
    versions: dict[str, dict[str, bytes]] = {"original": {}, "wide 2:1": {}, "tall 1:2": {}}
    for name, (load, _) in LABELLED_PHOTOS.items():
        photo = Image.fromarray(load()).convert("RGB")
        w, h = photo.size
        for version, image in (
            ("original", photo),
            ("wide 2:1", place(photo, (2 * w, h), WHITE)),
            ("tall 1:2", place(photo, (w, 2 * h), WHITE)),
        ):
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            versions[version][name] = buffer.getvalue()
    return versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=600, help="demo products to retrieve")
    parser.add_argument("--seed", type=int, default=0, help="picks products, shapes the queries")
    parser.add_argument("--threads", type=int, default=0, help="0: the embedder's default")
    args = parser.parse_args()

    start = time.perf_counter()
    products, stored = demo_products(args.products, args.seed)
    rng = random.Random(f"bench-fit:{args.seed}")
    canvases = [list(CANVASES)[n % len(CANVASES)] for n in range(len(products))]
    queries = [
        second_shot(data, canvas, rng) for data, canvas in zip(stored, canvases, strict=True)
    ]
    looks = [(p.style, p.colour) for p in products]
    best_alike = np.array([min(5, looks.count(look)) for look in looks])
    versions = real_photo_versions()

    hits: dict[Fit, NDArray[np.bool_]] = {}
    alike: dict[Fit, NDArray[np.int64]] = {}
    ranks: dict[Fit, dict[str, dict[str, int]]] = {}
    for fit in FITS:
        embedder = LocalEmbedder(LocalEmbedderConfig(fit=fit, threads=args.threads))
        gallery, asked = unit_vectors(embedder, stored), unit_vectors(embedder, queries)
        hits[fit], alike[fit] = retrieval(gallery, asked, looks)
        ranks[fit] = {
            version: {
                name: right_class_rank(embedder, data, LABELLED_PHOTOS[name][1])
                for name, data in photos.items()
            }
            for version, photos in versions.items()
        }

    kinds = len(set(looks))
    print(
        f"retrieval: {len(products)} demo products ({kinds} kind+colour pairs), one second-shot "
        f"query each, seed {args.seed}"
    )
    print(f"{'query canvas':<14} {'queries':>7} | {'recall@1':>17} | {'kind+colour in top 5':>26}")
    print(f"{'':<14} {'':>7} | {'pad':>8} {'crop':>8} | {'pad':>8} {'crop':>8} {'best':>8}")
    groups = {"all": list(CANVASES), "non-square": [c for c in CANVASES if c != "square 1:1"]}
    groups |= {canvas: [canvas] for canvas in CANVASES}
    for label, members in groups.items():
        rows = np.array([canvas in members for canvas in canvases])
        if not rows.any():
            continue
        print(
            f"{label:<14} {int(rows.sum()):>7} | "
            + " ".join(f"{hits[fit][rows].mean():>8.1%}" for fit in FITS)
            + " | "
            + " ".join(f"{alike[fit][rows].mean():>8.2f}" for fit in FITS)
            + f" {best_alike[rows].mean():>8.2f}"
        )

    names = list(LABELLED_PHOTOS)
    print()
    print(f"classification: {len(names)} scikit-image photos ({', '.join(names)}), ImageNet")
    print(f"{'version':<10} | {'top-1':>11} | {'top-5':>11}")
    print(f"{'':<10} | {'pad':>5} {'crop':>5} | {'pad':>5} {'crop':>5}")
    for version in versions:
        found = {fit: list(ranks[fit][version].values()) for fit in FITS}
        top1 = " ".join(f"{sum(r == 1 for r in found[fit])}/{len(names)}".rjust(5) for fit in FITS)
        top5 = " ".join(f"{sum(r <= 5 for r in found[fit])}/{len(names)}".rjust(5) for fit in FITS)
        print(f"{version:<10} | {top1} | {top5}")
    print(f"{'rank, pad/crop':<14} " + " ".join(f"{version:>10}" for version in versions))
    for name in names:
        cells = (f"{ranks['pad'][v][name]}/{ranks['crop'][v][name]}" for v in versions)
        print(f"{name:<14} " + " ".join(f"{cell:>10}" for cell in cells))
    print(f"seconds: {time.perf_counter() - start:.0f}")


if __name__ == "__main__":
    main()
