"""Sales with photos for the benchmarks: distinct JPEGs on disk, served by a fast local server.

Every sale gets its own photo (an 800x800 JPEG of about 100 KiB, as product photos are), so no
run can take a shortcut through identical photos; or, for the memory benchmark, its own
camera-size photo (`write_camera_photos`: a few are made, and each sale's is one of them with
the sale's number in a comment, so its bytes are its own). The photos are served by an
aiohttp server in another process, from memory, so that the server takes no CPU from the
process measured and `measure_server` can show it is not the bottleneck (`python -m
http.server` is: one request at a time). The sales are `sales_data`'s, with each sale's
photo URL filled in.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from aiohttp import web
from PIL import Image, ImageDraw

from bench_local_model import synthetic_photos
from sales_data import write_sales_database
from smartgo_exporter.config import PhotoConfig
from smartgo_exporter.demo.store import SALES_TABLE
from smartgo_exporter.photo_fetcher import PhotoFetcher


def write_photos(folder: Path, count: int) -> list[Path]:
    """`count` distinct JPEGs named 1.jpg ... N.jpg (sale id N gets N.jpg), made on every core."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [(folder, start, min(start + 100, count + 1)) for start in range(1, count + 1, 100)]
    with multiprocessing.get_context("spawn").Pool() as pool:
        pool.starmap(_write_chunk, chunks)
    return [folder / f"{number}.jpg" for number in range(1, count + 1)]


def _write_chunk(folder: Path, start: int, stop: int) -> None:
    for number, photo in zip(
        range(start, stop), synthetic_photos(stop - start, seed=start), strict=True
    ):
        (folder / f"{number}.jpg").write_bytes(photo)


CAMERA_SIZE = (4032, 3024)
"""A 12-megapixel phone camera's photo, as shops upload them unresized."""


def write_camera_photos(folder: Path, count: int = 8) -> list[Path]:
    """`count` distinct camera-size JPEGs of about 9.5 MB (camera-0.jpg, ...), made on every
    core: items on a backdrop under sensor noise, which is what keeps camera JPEGs large."""
    folder.mkdir(parents=True, exist_ok=True)
    with multiprocessing.get_context("spawn").Pool() as pool:
        pool.starmap(_write_camera_photo, [(folder, number) for number in range(count)])
    return [folder / f"camera-{number}.jpg" for number in range(count)]


def _write_camera_photo(folder: Path, number: int) -> None:
    rng = np.random.default_rng(number)
    width, height = CAMERA_SIZE
    image = Image.new("RGB", CAMERA_SIZE, tuple(int(v) for v in 180 + rng.integers(0, 60, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        box = (x, y, x + int(rng.integers(500, 2000)), y + int(rng.integers(500, 1500)))
        draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-42, 43, (height, width, 3))
    photo = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    photo.save(folder / f"camera-{number}.jpg", "JPEG", quality=95)


def write_sales_with_photos(
    database: Path, sales: int, photo_base_url: str, *, days: int = 1
) -> None:
    """`sales_data`'s sales (of one day, or over `days` days), each with its own photo: sale
    id N shows `<base>/N.jpg`."""
    write_sales_database(database, sales, days=days)
    connection = sqlite3.connect(database)
    with connection:
        connection.execute(
            f"UPDATE {SALES_TABLE} SET photo_url = ? || '/' || id || '.jpg'",  # noqa: S608
            (photo_base_url,),
        )
    connection.close()


@contextlib.contextmanager
def serve_photos(folder: Path) -> Iterator[str]:
    """Serve `folder`'s JPEGs from another process; yields the base URL of the photos."""
    server = subprocess.Popen(
        [sys.executable, __file__, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[-1])
        yield f"http://127.0.0.1:{port}/photos"
    finally:
        server.terminate()
        server.wait(timeout=10)


def _serve(folder: Path) -> None:
    photos = {path.name: path.read_bytes() for path in folder.glob("*.jpg")}
    cameras = [body for name, body in sorted(photos.items()) if name.startswith("camera-")]

    async def photo(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = photos.get(name)
        if body is None and cameras and name.removesuffix(".jpg").isdigit():
            body = _camera_shot(cameras, int(name.removesuffix(".jpg")))
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, content_type="image/jpeg")

    async def start() -> None:
        app = web.Application()
        app.router.add_get("/photos/{name}", photo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"serving {len(photos)} photos on port {port}", flush=True)
        while True:
            await asyncio.sleep(3600)

    asyncio.run(start())


def _camera_shot(cameras: list[bytes], number: int) -> bytes:
    """Sale N's own camera photo: one of the few made, with N in a JPEG comment, so that every
    sale's photo has its own bytes (and hash) to fetch, decode and embed, as in a real shop."""
    base = cameras[number % len(cameras)]
    comment = f"sale {number}".encode()
    segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    return base[:2] + segment + base[2:]  # just after the start-of-image marker


def measure_server(urls: list[str]) -> float:
    """Photos per second the server delivers to the exporter's own fetcher (8 at a time)."""

    async def fetch_all() -> None:
        async with PhotoFetcher(PhotoConfig(allow_networks=["127.0.0.0/8"])) as fetcher:
            await fetcher.fetch_all(urls)

    start = time.perf_counter()
    asyncio.run(fetch_all())
    return len(urls) / (time.perf_counter() - start)


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))
