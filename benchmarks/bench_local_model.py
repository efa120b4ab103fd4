"""Throughput of the local embedder: decoding alone, the model alone, and both, in images/second.

Run with the dev environment: `.venv/bin/python benchmarks/bench_local_model.py`. The photos are
synthetic 800x800 JPEGs made in memory (a coloured object on a light background, plus noise, so
JPEG decoding costs what a real product photo's does). Each figure is the best of `--repeat`
runs, since a shared machine only ever makes a run slower.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from smartgo_exporter.config import LocalEmbedderConfig
from smartgo_exporter.embedders.efficientnet_lite import build_model
from smartgo_exporter.embedders.local import LocalEmbedder, packaged_weights
from smartgo_exporter.embedders.preprocessing import decode_for_model
from smartgo_exporter.embedders.torch_legacy import read_state_dict


def synthetic_photos(count: int, size: int = 800, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(count):
        background = 235 + rng.integers(0, 20, size=3)
        image = Image.new("RGB", (size, size), tuple(int(v) for v in background))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = rng.integers(50, size // 2, size=2)
            x1, y1 = rng.integers(size // 2, size - 50, size=2)
            colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
            draw.ellipse((int(x0), int(y0), int(x1), int(y1)), fill=colour)
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, size=(size, size, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
        photos.append(buffer.getvalue())
    return photos


def best_rate(work: Callable[[], object], items: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return items / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=LocalEmbedderConfig().batch_size)
    parser.add_argument("--threads", type=int, default=0, help="0: the embedder's default")
    parser.add_argument("--fit", choices=["pad", "crop"], default=LocalEmbedderConfig().fit)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    print(f"cores: {os.cpu_count()}, fit={args.fit}, batch={args.batch_size}, images={args.images}")
    data = packaged_weights().read_bytes()
    start = time.perf_counter()
    state = read_state_dict(data)
    read_seconds = time.perf_counter() - start
    start = time.perf_counter()
    build_model(state).SerializeToString()
    build_seconds = time.perf_counter() - start
    config = LocalEmbedderConfig(fit=args.fit, batch_size=args.batch_size, threads=args.threads)
    start = time.perf_counter()
    embedder = LocalEmbedder(config)
    load_seconds = time.perf_counter() - start
    print(
        f"load: read checkpoint {read_seconds * 1000:.0f} ms, build + serialize graph "
        f"{build_seconds * 1000:.0f} ms, whole constructor {load_seconds * 1000:.0f} ms"
    )

    photos = synthetic_photos(args.images)
    print(f"photos: {len(photos)} JPEGs, {sum(map(len, photos)) / len(photos) / 1024:.0f} KiB each")

    def decode_all() -> list[object]:
        return [decode_for_model(photo, args.fit) for photo in photos]

    pixels = [item for item in decode_all() if isinstance(item, np.ndarray)]
    batch = pixels[: args.batch_size]

    def run_model() -> None:
        for _ in range(max(1, len(photos) // len(batch))):
            embedder._run(batch)

    model_items = max(1, len(photos) // len(batch)) * len(batch)
    decode_rate = best_rate(decode_all, len(photos), args.repeat)
    model_rate = best_rate(run_model, model_items, args.repeat)
    both_rate = best_rate(lambda: embedder.embed(photos), len(photos), args.repeat)
    print(f"decode + preprocess alone: {decode_rate:7.1f} images/s (one thread)")
    print(f"model alone (one thread, batch {len(batch)}): {model_rate:7.1f} images/s")
    print(f"decode + model (embed, {embedder.workers} workers): {both_rate:7.1f} images/s")


if __name__ == "__main__":
    main()
