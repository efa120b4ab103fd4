"""The photo fetcher, against real HTTP servers on loopback.

One aiohttp server on 127.0.0.1 plays every kind of photo host. A decoy on 127.0.0.2, on the
same port, counts every TCP connection it accepts: the fetcher is allowed 127.0.0.1/32 only, so
the decoy stands for a private address that must never be reached, and a count of zero proves
that nothing connected to it, not merely that no request got through. A neighbour on another
port of 127.0.0.1 counts the same way: it stands for another service of the photo host (a
database, a cache) that allowing the photo server's host and port must not open.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import socket
import struct
import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver
from PIL import Image

from smartgo_exporter.config import PhotoConfig
from smartgo_exporter.errors import PhotoError
from smartgo_exporter.photo_fetcher import Photo, PhotoFetcher

LARGE_BYTES = 5_000
ALLOWED = "127.0.0.1/32"
SLOW_SECONDS = 60
"""How long /slow/ takes to answer: far past any time limit a test sets, so only a fetcher
that hangs up ends the request sooner."""


def _picture() -> Image.Image:
    """64x48 pixels: 3072 in all."""
    picture = Image.new("RGB", (64, 48))
    picture.putdata([(x * 4, y * 5, x * y % 256) for y in range(48) for x in range(64)])
    return picture


def _encoded(picture: Image.Image, image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, image_format, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(side: int = 20_000) -> bytes:
    """A valid black 1-bit PNG of side x side pixels (400 million) that weighs about 50 KB."""
    packer = zlib.compressobj(9)
    rows = (b"\x00" * (1 + side // 8)) * 1000
    pixels = b"".join(packer.compress(rows) for _ in range(side // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored 64x48, shown 48x64
    return _encoded(_picture(), "JPEG", exif=exif)


def _noisy_jpeg() -> bytes:
    noise = Image.frombytes("RGB", (256, 256), bytes(range(256)) * 768)
    return _encoded(noise.rotate(33), "JPEG", quality=95)


IMAGES = {
    "jpeg": _encoded(_picture(), "JPEG"),
    "png": _encoded(_picture(), "PNG"),
    "webp": _encoded(_picture(), "WEBP"),
    "gif": _encoded(_picture(), "GIF"),
    "rotated": _rotated_jpeg(),
    "truncated": _noisy_jpeg()[:-2000],
    "html": b"<!doctype html><html><title>Photo</title><body>Not a photo</body></html>",
}


@dataclass
class PhotoHost:
    """What the test servers offer and what they saw."""

    port: int
    bomb: bytes
    requests: Counter[str] = field(default_factory=Counter)
    user_agents: dict[str, str] = field(default_factory=dict)
    in_flight: Counter[str] = field(default_factory=Counter)
    most_in_flight: Counter[str] = field(default_factory=Counter)
    decoy_connections: int = 0
    neighbour_port: int = 0
    neighbour_connections: int = 0
    hung_up: defaultdict[str, threading.Event] = field(
        default_factory=lambda: defaultdict(threading.Event)
    )
    """Set for a path when its client hung up before the slow response was sent."""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def decoy_url(self) -> str:
        return f"http://127.0.0.2:{self.port}/photo.jpg"

    @property
    def neighbour_url(self) -> str:
        return f"http://127.0.0.1:{self.neighbour_port}/photo.jpg"

    @property
    def allowed_host(self) -> str:
        """The `photos.allow_hosts` entry of the photo server alone."""
        return f"127.0.0.1:{self.port}"


def _photo_host_app(host: PhotoHost) -> web.Application:
    @web.middleware
    async def record(
        request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        host.requests[request.path] += 1
        host.user_agents[request.path] = request.headers.get("User-Agent", "")
        return await handler(request)

    def seen(request: web.Request) -> int:
        return host.requests[request.path]

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=IMAGES[request.match_info["name"]])

    async def bomb(request: web.Request) -> web.Response:
        return web.Response(body=host.bomb, content_type="image/png")

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    async def flaky(request: web.Request) -> web.Response:
        if seen(request) == 1:
            return web.Response(status=500)
        return web.Response(body=IMAGES["jpeg"])

    async def busy(request: web.Request) -> web.Response:
        if seen(request) == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(body=IMAGES["jpeg"])

    async def busy_until(request: web.Request) -> web.Response:
        if seen(request) == 1:
            later = formatdate(time.time() + 2, usegmt=True)
            return web.Response(status=429, headers={"Retry-After": later})
        return web.Response(body=IMAGES["jpeg"])

    async def busy_for_an_hour(request: web.Request) -> web.Response:
        return web.Response(status=429, headers={"Retry-After": "3600"})

    async def slow(request: web.Request) -> web.Response:
        try:
            await asyncio.sleep(SLOW_SECONDS)
        except asyncio.CancelledError:
            # The runner cancels a handler whose client hung up (`handler_cancellation`).
            host.hung_up[request.path].set()
            raise
        return web.Response(body=IMAGES["jpeg"])

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b"\xff" * 65536
        try:
            while True:
                await response.write(chunk)
        except ConnectionError:
            return response

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=b"\xff" * LARGE_BYTES)

    async def large_chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(LARGE_BYTES // 500):
            await response.write(b"\xff" * 500)
        await response.write_eof()
        return response

    async def hops(request: web.Request) -> web.Response:
        left = int(request.match_info["left"])
        if left == 0:
            return web.Response(body=IMAGES["jpeg"])
        raise web.HTTPFound(f"/redirect/{left - 1}/{request.match_info['key']}")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.path)

    async def redirect_to(request: web.Request) -> web.Response:
        port = request.url.port
        targets = {
            "decoy": host.decoy_url,
            "neighbour": host.neighbour_url,
            "metadata": "http://169.254.169.254/latest/meta-data/",
            "file": "file:///etc/passwd",
            "userinfo": f"http://user:secret@127.0.0.1:{port}/image/jpeg",
            "name": f"http://photos.example.test:{port}/photo.jpg",
        }
        raise web.HTTPFound(targets[request.match_info["where"]])

    async def slowish(request: web.Request) -> web.Response:
        group = request.match_info["group"]
        host.in_flight[group] += 1
        host.most_in_flight[group] = max(host.most_in_flight[group], host.in_flight[group])
        try:
            await asyncio.sleep(0.05)
        finally:
            host.in_flight[group] -= 1
        return web.Response(body=IMAGES["jpeg"])

    app = web.Application(middlewares=[record])
    app.add_routes(
        [
            web.get("/image/{name}", image),
            web.get("/image/{name}/{key}", image),
            web.get("/bomb/{key}", bomb),
            web.get("/status/{code}/{key}", status),
            web.get("/flaky/{key}", flaky),
            web.get("/busy/{key}", busy),
            web.get("/busy-until/{key}", busy_until),
            web.get("/busy-for-an-hour/{key}", busy_for_an_hour),
            web.get("/slow/{key}", slow),
            web.get("/endless/{key}", endless),
            web.get("/large/{key}", large),
            web.get("/large-chunked/{key}", large_chunked),
            web.get("/redirect/{left}/{key}", hops),
            web.get("/loop/{key}", loop),
            web.get("/redirect-to/{where}/{key}", redirect_to),
            web.get("/slowish/{group}/{index}", slowish),
        ]
    )
    return app


async def _answer_with_a_photo(writer: asyncio.StreamWriter) -> None:
    body = IMAGES["jpeg"]
    writer.write(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    await writer.drain()
    writer.close()


async def _start(host: PhotoHost) -> tuple[web.AppRunner, list[asyncio.Server]]:
    """The photo server and the decoy on one port number, so a name can resolve to either of
    them; the neighbour on another port of the photo server's address."""

    async def decoy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host.decoy_connections += 1
        await _answer_with_a_photo(writer)

    async def neighbour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host.neighbour_connections += 1
        await _answer_with_a_photo(writer)

    for _ in range(20):
        runner = web.AppRunner(
            _photo_host_app(host), handler_cancellation=True, shutdown_timeout=1, access_log=None
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host.port = runner.addresses[0][1]
        try:
            decoy_server = await asyncio.start_server(decoy, "127.0.0.2", host.port)
        except OSError:
            await runner.cleanup()
            continue
        neighbour_server = await asyncio.start_server(neighbour, "127.0.0.1", 0)
        host.neighbour_port = neighbour_server.sockets[0].getsockname()[1]
        return runner, [decoy_server, neighbour_server]
    raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")


@pytest.fixture(scope="session")
def photo_host() -> Iterator[PhotoHost]:
    host = PhotoHost(port=0, bomb=_bomb_png())
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="photo-host", daemon=True)
    thread.start()
    runner, listeners = asyncio.run_coroutine_threadsafe(_start(host), loop).result()
    yield host

    async def stop() -> None:
        for listener in listeners:
            listener.close()
        await runner.cleanup()

    asyncio.run_coroutine_threadsafe(stop(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


@pytest.fixture
def key() -> str:
    """A path segment of this test's own, so per-path counters start at zero."""
    return uuid.uuid4().hex


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names the system resolver answers as the test says: stands in for a hostile DNS server."""
    answers: dict[str, list[str]] = {}
    system = ThreadedResolver.resolve

    async def resolve(
        self: ThreadedResolver,
        host: str,
        port: int = 0,
        family: socket.AddressFamily = socket.AF_INET,
    ) -> list[ResolveResult]:
        if host not in answers:
            return await system(self, host, port, family)
        flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        return [
            ResolveResult(
                hostname=host, host=address, port=port, family=socket.AF_INET, proto=0, flags=flags
            )
            for address in answers[host]
        ]

    monkeypatch.setattr(ThreadedResolver, "resolve", resolve)
    return answers


def _config(**overrides: Any) -> PhotoConfig:
    settings: dict[str, Any] = {
        "allow_networks": [ALLOWED],
        "backoff_seconds": 0.01,
        "timeout_seconds": 5,
    }
    return PhotoConfig(**(settings | overrides))


def fetch(url: str, **config: Any) -> Photo:
    async def run() -> Photo:
        async with PhotoFetcher(_config(**config)) as fetcher:
            return await fetcher.fetch(url)

    return asyncio.run(run())


def failure(url: str, **config: Any) -> PhotoError:
    with pytest.raises(PhotoError) as caught:
        fetch(url, **config)
    assert caught.value.url == url
    return caught.value


def fetch_all(urls: list[str], **config: Any) -> list[Photo | PhotoError]:
    async def run() -> list[Photo | PhotoError]:
        async with PhotoFetcher(_config(**config)) as fetcher:
            return await fetcher.fetch_all(urls)

    return asyncio.run(run())


# What a fetched photo carries


@pytest.mark.parametrize(
    ("name", "image_format"), [("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"), ("gif", "GIF")]
)
def test_a_photo_comes_back_with_its_bytes_size_and_format(
    photo_host: PhotoHost, name: str, image_format: str
) -> None:
    photo = fetch(photo_host.url(f"/image/{name}"))

    assert photo == Photo(
        url=photo_host.url(f"/image/{name}"),
        data=IMAGES[name],
        sha256=hashlib.sha256(IMAGES[name]).hexdigest(),
        width=64,
        height=48,
        format=image_format,
    )


def test_the_size_is_the_displayed_size_after_exif_rotation(photo_host: PhotoHost) -> None:
    photo = fetch(photo_host.url("/image/rotated"))

    assert (photo.width, photo.height) == (48, 64)


def test_the_configured_user_agent_is_sent(photo_host: PhotoHost) -> None:
    fetch(photo_host.url("/image/jpeg"), user_agent="smartgo-exporter/test")

    assert photo_host.user_agents["/image/jpeg"] == "smartgo-exporter/test"


# Retries


def test_a_404_fails_at_once_without_a_retry(photo_host: PhotoHost, key: str) -> None:
    error = failure(photo_host.url(f"/status/404/{key}"))

    assert error.reason == "http_404"
    assert photo_host.requests[f"/status/404/{key}"] == 1


def test_a_500_is_tried_again_and_the_second_answer_counts(photo_host: PhotoHost, key: str) -> None:
    photo = fetch(photo_host.url(f"/flaky/{key}"))

    assert photo.data == IMAGES["jpeg"]
    assert photo_host.requests[f"/flaky/{key}"] == 2


def test_a_lasting_500_fails_after_every_attempt_is_used(photo_host: PhotoHost, key: str) -> None:
    error = failure(photo_host.url(f"/status/503/{key}"), attempts=3)

    assert error.reason == "http_503"
    assert photo_host.requests[f"/status/503/{key}"] == 3


def test_retries_back_off_exponentially(photo_host: PhotoHost, key: str) -> None:
    started = time.monotonic()
    failure(photo_host.url(f"/status/500/{key}"), attempts=3, backoff_seconds=0.2)

    assert time.monotonic() - started >= 0.2 + 0.4


def test_a_backoff_that_would_pass_the_time_limit_gives_up_with_the_last_answer(
    photo_host: PhotoHost, key: str
) -> None:
    error = failure(photo_host.url(f"/status/502/{key}"), backoff_seconds=60, timeout_seconds=2)

    assert error.reason == "http_502"
    assert photo_host.requests[f"/status/502/{key}"] == 1


def test_a_429_is_retried_after_the_seconds_in_retry_after(photo_host: PhotoHost, key: str) -> None:
    started = time.monotonic()
    photo = fetch(photo_host.url(f"/busy/{key}"))

    assert photo.data == IMAGES["jpeg"]
    assert time.monotonic() - started >= 1
    assert photo_host.requests[f"/busy/{key}"] == 2


def test_a_429_is_retried_after_the_http_date_in_retry_after(
    photo_host: PhotoHost, key: str
) -> None:
    started = time.monotonic()
    photo = fetch(photo_host.url(f"/busy-until/{key}"))

    assert photo.data == IMAGES["jpeg"]
    # The date has whole seconds: "in 2 s" is anything from 1 s to 2 s away.
    assert time.monotonic() - started >= 1
    assert photo_host.requests[f"/busy-until/{key}"] == 2


def test_a_retry_after_past_the_time_limit_is_not_waited_for(
    photo_host: PhotoHost, key: str
) -> None:
    error = failure(photo_host.url(f"/busy-for-an-hour/{key}"), timeout_seconds=3)

    assert error.reason == "http_429"
    assert photo_host.requests[f"/busy-for-an-hour/{key}"] == 1


def test_a_refused_connection_fails_as_a_connection_error() -> None:
    # Bound but not listening: connections are refused, and no other process can take the port
    # and answer in the meantime, as it could once the socket were closed.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        error = failure(f"http://127.0.0.1:{port}/photo.jpg")

    assert error.reason == "connection_error"


# Time and size limits


def test_a_server_slower_than_the_time_limit_times_out(photo_host: PhotoHost, key: str) -> None:
    error = failure(photo_host.url(f"/slow/{key}"), timeout_seconds=0.5)

    assert error.reason == "timeout"
    assert error.detail == "no photo within 0.5 s"
    assert photo_host.requests[f"/slow/{key}"] == 1
    # The fetcher gave up on the response and dropped the connection while the server was still
    # at work on it. The server hears of it on its own thread, so the test waits for that; the
    # bound only keeps a fetcher that never hangs up from holding the test for SLOW_SECONDS.
    assert photo_host.hung_up[f"/slow/{key}"].wait(timeout=SLOW_SECONDS / 2)


def test_an_endless_body_is_cut_off_at_max_bytes(photo_host: PhotoHost, key: str) -> None:
    error = failure(photo_host.url(f"/endless/{key}"), max_bytes=1_000_000)

    assert error.reason == "too_large"


def test_a_content_length_over_max_bytes_is_refused(photo_host: PhotoHost, key: str) -> None:
    error = failure(photo_host.url(f"/large/{key}"), max_bytes=LARGE_BYTES - 1)

    assert error.reason == "too_large"
    assert "Content-Length" in error.detail


def test_a_chunked_body_over_max_bytes_is_refused(photo_host: PhotoHost, key: str) -> None:
    error = failure(photo_host.url(f"/large-chunked/{key}"), max_bytes=LARGE_BYTES - 1)

    assert error.reason == "too_large"
    assert "Content-Length" not in error.detail


def test_a_body_of_exactly_max_bytes_is_not_too_large(photo_host: PhotoHost, key: str) -> None:
    error = failure(photo_host.url(f"/large/{key}"), max_bytes=LARGE_BYTES)

    assert error.reason == "not_an_image"


# Is it an image?


def test_an_html_page_is_not_an_image(photo_host: PhotoHost) -> None:
    assert failure(photo_host.url("/image/html")).reason == "not_an_image"


def test_a_truncated_jpeg_is_not_an_image(photo_host: PhotoHost) -> None:
    assert failure(photo_host.url("/image/truncated")).reason == "not_an_image"


def test_an_image_over_max_pixels_is_refused(photo_host: PhotoHost) -> None:
    error = failure(photo_host.url("/image/png"), max_pixels=64 * 48 - 1)

    assert error.reason == "too_many_pixels"


def test_a_decompression_bomb_is_refused_from_its_header(photo_host: PhotoHost, key: str) -> None:
    assert len(photo_host.bomb) < 100_000

    error = failure(photo_host.url(f"/bomb/{key}"))

    assert error.reason == "too_many_pixels"


def test_pillows_decompression_bomb_error_is_too_many_pixels(
    photo_host: PhotoHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 3072-pixel photo is over twice that

    error = failure(photo_host.url("/image/png"), max_pixels=10**9)

    assert error.reason == "too_many_pixels"


def test_pillows_decompression_bomb_warning_is_too_many_pixels(
    photo_host: PhotoHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # the 3072-pixel photo is under twice that

    with pytest.warns(Image.DecompressionBombWarning):
        error = failure(photo_host.url("/image/png"), max_pixels=10**9)

    assert error.reason == "too_many_pixels"


# Redirects


def test_a_redirect_is_followed_and_the_photo_keeps_the_url_it_was_asked_for(
    photo_host: PhotoHost, key: str
) -> None:
    photo = fetch(photo_host.url(f"/redirect/1/{key}"))

    assert photo.url == photo_host.url(f"/redirect/1/{key}")
    assert photo.data == IMAGES["jpeg"]


def test_five_redirects_are_followed(photo_host: PhotoHost, key: str) -> None:
    assert fetch(photo_host.url(f"/redirect/5/{key}")).data == IMAGES["jpeg"]


def test_a_sixth_redirect_is_too_many(photo_host: PhotoHost, key: str) -> None:
    assert failure(photo_host.url(f"/redirect/6/{key}")).reason == "too_many_redirects"


def test_a_redirect_loop_is_too_many_redirects(photo_host: PhotoHost, key: str) -> None:
    error = failure(photo_host.url(f"/loop/{key}"))

    assert error.reason == "too_many_redirects"
    assert photo_host.requests[f"/loop/{key}"] == 6


def test_a_redirect_to_a_loopback_address_is_refused_without_connecting(
    photo_host: PhotoHost, key: str
) -> None:
    before = photo_host.decoy_connections

    error = failure(photo_host.url(f"/redirect-to/decoy/{key}"))

    assert error.reason == "refused_address"
    assert photo_host.decoy_connections == before


def test_a_redirect_to_the_cloud_metadata_address_is_refused(
    photo_host: PhotoHost, key: str
) -> None:
    error = failure(photo_host.url(f"/redirect-to/metadata/{key}"))

    assert error.reason == "refused_address"
    assert "169.254.169.254" in error.detail


def test_a_redirect_to_a_file_url_is_refused(photo_host: PhotoHost, key: str) -> None:
    assert failure(photo_host.url(f"/redirect-to/file/{key}")).reason == "unsupported_scheme"


def test_a_redirect_to_a_url_with_a_password_is_refused_without_leaking_it(
    photo_host: PhotoHost, key: str
) -> None:
    error = failure(photo_host.url(f"/redirect-to/userinfo/{key}"))

    assert error.reason == "userinfo_in_url"
    assert "secret" not in str(error)


def test_a_redirect_to_a_name_that_resolves_to_a_refused_address_is_refused_without_connecting(
    photo_host: PhotoHost, key: str, dns: dict[str, list[str]]
) -> None:
    dns["photos.example.test"] = ["127.0.0.2"]
    before = photo_host.decoy_connections

    error = failure(photo_host.url(f"/redirect-to/name/{key}"))

    assert error.reason == "refused_address"
    assert photo_host.decoy_connections == before


# Where the fetcher may connect


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.2",
        "2130706434",  # 127.0.0.2 as one decimal number
        "0177.0.0.2",  # octal
        "0x7f.0.0.2",  # hexadecimal
        "127.2",  # the "a.b" shorthand
        "[::ffff:127.0.0.2]",  # IPv4-mapped IPv6
    ],
)
def test_a_private_address_in_any_spelling_is_refused_without_connecting(
    photo_host: PhotoHost, host: str
) -> None:
    before = photo_host.decoy_connections

    error = failure(f"http://{host}:{photo_host.port}/photo.jpg")

    assert error.reason == "refused_address"
    assert photo_host.decoy_connections == before


def test_a_name_that_resolves_to_a_private_address_is_refused_without_connecting(
    photo_host: PhotoHost, dns: dict[str, list[str]]
) -> None:
    dns["photos.example.test"] = ["127.0.0.2"]
    before = photo_host.decoy_connections

    error = failure(f"http://photos.example.test:{photo_host.port}/photo.jpg")

    assert error.reason == "refused_address"
    assert photo_host.decoy_connections == before


def test_a_name_with_a_private_and_an_allowed_address_connects_only_to_the_allowed_one(
    photo_host: PhotoHost, dns: dict[str, list[str]]
) -> None:
    dns["photos.example.test"] = ["127.0.0.2", "127.0.0.1"]
    before = photo_host.decoy_connections

    photo = fetch(f"http://photos.example.test:{photo_host.port}/image/jpeg")

    assert photo.data == IMAGES["jpeg"]
    assert photo_host.decoy_connections == before


def test_localhost_is_refused_unless_its_network_is_allowed(
    photo_host: PhotoHost, key: str
) -> None:
    path = f"/image/jpeg/{key}"

    error = failure(f"http://localhost:{photo_host.port}{path}", allow_networks=[])

    assert error.reason == "refused_address"
    assert photo_host.requests[path] == 0
    assert fetch(f"http://localhost:{photo_host.port}{path}").data == IMAGES["jpeg"]


def test_a_private_network_named_in_allow_networks_is_reachable(photo_host: PhotoHost) -> None:
    before = photo_host.decoy_connections

    photo = fetch(photo_host.decoy_url, allow_networks=["127.0.0.0/8"])

    assert photo.data == IMAGES["jpeg"]
    assert photo_host.decoy_connections == before + 1


# An allowed host and port


def test_the_host_and_port_in_allow_hosts_is_reachable_without_its_network(
    photo_host: PhotoHost, key: str
) -> None:
    path = f"/image/jpeg/{key}"

    photo = fetch(photo_host.url(path), allow_networks=[], allow_hosts=[photo_host.allowed_host])

    assert photo.data == IMAGES["jpeg"]
    assert photo_host.requests[path] == 1


def test_another_port_of_an_allowed_host_is_refused_without_connecting(
    photo_host: PhotoHost,
) -> None:
    before = photo_host.neighbour_connections

    error = failure(
        photo_host.neighbour_url, allow_networks=[], allow_hosts=[photo_host.allowed_host]
    )

    assert error.reason == "refused_address"
    assert str(photo_host.neighbour_port) in error.detail
    assert photo_host.neighbour_connections == before


def test_a_redirect_to_another_port_of_an_allowed_host_is_refused_without_connecting(
    photo_host: PhotoHost, key: str
) -> None:
    before = photo_host.neighbour_connections
    path = f"/redirect-to/neighbour/{key}"

    error = failure(photo_host.url(path), allow_networks=[], allow_hosts=[photo_host.allowed_host])

    assert error.reason == "refused_address"
    assert photo_host.requests[path] == 1
    assert photo_host.neighbour_connections == before


def test_redirects_within_an_allowed_host_and_port_are_followed(
    photo_host: PhotoHost, key: str
) -> None:
    photo = fetch(
        photo_host.url(f"/redirect/2/{key}"),
        allow_networks=[],
        allow_hosts=[photo_host.allowed_host],
    )

    assert photo.data == IMAGES["jpeg"]


def test_an_allowed_name_reaches_the_private_address_it_resolves_to(
    photo_host: PhotoHost, key: str, dns: dict[str, list[str]]
) -> None:
    dns["photos.internal.test"] = ["127.0.0.1"]
    path = f"/image/jpeg/{key}"

    photo = fetch(
        f"http://photos.internal.test:{photo_host.port}{path}",
        allow_networks=[],
        allow_hosts=[f"photos.internal.test:{photo_host.port}"],
    )

    assert photo.data == IMAGES["jpeg"]
    assert photo_host.requests[path] == 1


def test_an_allowed_name_on_another_port_is_refused_after_resolving_without_connecting(
    photo_host: PhotoHost, dns: dict[str, list[str]]
) -> None:
    dns["photos.internal.test"] = ["127.0.0.1"]
    before = photo_host.neighbour_connections

    error = failure(
        f"http://photos.internal.test:{photo_host.neighbour_port}/photo.jpg",
        allow_networks=[],
        allow_hosts=[f"photos.internal.test:{photo_host.port}"],
    )

    assert error.reason == "refused_address"
    assert photo_host.neighbour_connections == before


def test_another_name_for_an_allowed_address_is_refused(photo_host: PhotoHost, key: str) -> None:
    """An entry admits the host it names: a name an attacker points at the address is not it."""
    path = f"/image/jpeg/{key}"

    error = failure(
        f"http://localhost:{photo_host.port}{path}",
        allow_networks=[],
        allow_hosts=[photo_host.allowed_host],
    )

    assert error.reason == "refused_address"
    assert photo_host.requests[path] == 0


def test_an_entry_with_a_scheme_refuses_the_other_scheme_without_connecting(
    photo_host: PhotoHost, key: str
) -> None:
    path = f"/image/jpeg/{key}"

    error = failure(
        photo_host.url(path),
        allow_networks=[],
        allow_hosts=[f"https://{photo_host.allowed_host}"],
    )

    assert error.reason == "refused_address"
    assert "https only" in error.detail
    assert photo_host.requests[path] == 0


def test_allow_networks_opens_every_port_of_its_addresses(photo_host: PhotoHost) -> None:
    """Why `allow_hosts` is the one to use: a range lets a photo URL reach any service in it."""
    before = photo_host.neighbour_connections

    photo = fetch(photo_host.neighbour_url, allow_networks=[ALLOWED])

    assert photo.data == IMAGES["jpeg"]
    assert photo_host.neighbour_connections == before + 1


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]/photo.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/photo.jpg",
        "http://192.168.1.1/photo.jpg",
        "http://100.64.0.1/photo.jpg",
        "http://0.0.0.0/photo.jpg",
        "http://224.0.0.1/photo.jpg",
        "http://[fd00::1]/photo.jpg",
        "http://[fe80::1%25eth0]/photo.jpg",
        "http://[2002:7f00:1::]/photo.jpg",  # 6to4 for 127.0.0.1
        "http://[64:ff9b::a9fe:a9fe]/photo.jpg",  # NAT64 for 169.254.169.254
    ],
)
def test_addresses_that_are_not_public_are_refused(url: str) -> None:
    assert failure(url, allow_networks=[]).reason == "refused_address"


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/photo.jpg", "gopher://example.com/"]
)
def test_schemes_other_than_http_and_https_are_refused(url: str) -> None:
    assert failure(url).reason == "unsupported_scheme"


def test_a_url_with_a_user_and_password_is_refused_without_connecting(
    photo_host: PhotoHost, key: str
) -> None:
    path = f"/image/jpeg/{key}"

    error = failure(f"http://user:secret@127.0.0.1:{photo_host.port}{path}")

    assert error.reason == "userinfo_in_url"
    assert "secret" not in error.detail
    assert photo_host.requests[path] == 0


@pytest.mark.parametrize(
    "url", ["", "photo.jpg", "http://", "http://[::1/photo.jpg", "http://1.2.3.4.5/photo.jpg"]
)
def test_a_malformed_url_is_invalid(url: str) -> None:
    assert failure(url).reason == "invalid_url"


# Many photos at once


def test_fetch_all_keeps_the_order_and_puts_each_failure_in_its_place(
    photo_host: PhotoHost, key: str
) -> None:
    urls = [
        photo_host.url("/image/jpeg"),
        photo_host.url(f"/status/404/{key}"),
        photo_host.url("/image/png"),
        photo_host.url("/image/html"),
        photo_host.decoy_url,
        photo_host.url("/image/gif"),
    ]

    results = fetch_all(urls)

    assert [result.url for result in results] == urls
    assert [
        result.format if isinstance(result, Photo) else result.reason for result in results
    ] == [
        "JPEG",
        "http_404",
        "PNG",
        "not_an_image",
        "refused_address",
        "GIF",
    ]


def test_fetch_all_never_has_more_than_concurrency_requests_in_flight(
    photo_host: PhotoHost, key: str
) -> None:
    urls = [photo_host.url(f"/slowish/{key}/{index}") for index in range(40)]

    results = fetch_all(urls, concurrency=4)

    assert all(isinstance(result, Photo) for result in results)
    assert photo_host.most_in_flight[key] == 4


def fetch_parts(urls: list[str], part_bytes: int, **config: Any) -> list[list[Photo | PhotoError]]:
    async def run() -> list[list[Photo | PhotoError]]:
        async with PhotoFetcher(_config(**config)) as fetcher:
            return [part async for part in fetcher.fetch_parts(urls, part_bytes)]

    return asyncio.run(run())


def test_fetch_parts_ends_each_part_at_the_photo_that_brings_it_to_part_bytes(
    photo_host: PhotoHost, key: str
) -> None:
    photo = len(IMAGES["jpeg"])
    urls = [photo_host.url(f"/slowish/{key}/{index}") for index in range(7)]
    urls.insert(1, photo_host.url(f"/status/404/{key}"))  # a failure weighs nothing

    parts = fetch_parts(urls, part_bytes=2 * photo, concurrency=4)

    assert [len(part) for part in parts] == [3, 2, 2, 1]
    assert [result.url for part in parts for result in part] == urls


def test_fetch_parts_starts_no_download_while_a_part_waits_for_its_caller(
    photo_host: PhotoHost, key: str
) -> None:
    urls = [photo_host.url(f"/slowish/{key}/{index}") for index in range(20)]

    def requested() -> int:
        prefix = f"/slowish/{key}/"
        return sum(count for path, count in photo_host.requests.items() if path.startswith(prefix))

    async def run() -> tuple[int, int]:
        async with PhotoFetcher(_config(concurrency=2)) as fetcher:
            parts = fetcher.fetch_parts(urls, part_bytes=len(IMAGES["jpeg"]))
            async with contextlib.aclosing(parts):
                await anext(parts)
                # Ample time for all 20 (50 ms each, 2 at a time) if nothing held them back.
                await asyncio.sleep(1.0)
                while_held = requested()
                rest = [part async for part in parts]
        return while_held, sum(map(len, rest))

    while_held, later = asyncio.run(run())

    assert while_held <= 1 + 2 * 2  # the part held, and at most a part per download slot
    assert later == 19


def test_the_concurrency_limit_is_shared_by_every_caller_of_a_fetcher(
    photo_host: PhotoHost, key: str
) -> None:
    async def run() -> None:
        async with PhotoFetcher(_config(concurrency=3)) as fetcher:
            batch = [photo_host.url(f"/slowish/{key}/{index}") for index in range(12)]
            singles = [
                fetcher.fetch(photo_host.url(f"/slowish/{key}/single-{index}"))
                for index in range(6)
            ]
            await asyncio.gather(fetcher.fetch_all(batch), fetcher.fetch_all(batch), *singles)

    asyncio.run(run())

    assert photo_host.most_in_flight[key] == 3
