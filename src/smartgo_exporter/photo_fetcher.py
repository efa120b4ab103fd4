"""Fetching product photos: the only place the exporter opens connections chosen by its data.

Photo URLs come from the point-of-sale database, so they are untrusted input: a URL (or a
redirect, or a DNS answer) could point the exporter at its own cloud metadata service or at a
private network. `PhotoFetcher` therefore refuses any destination that is not a public address,
unless `PhotoConfig.allow_hosts` names its scheme, host and port or `PhotoConfig.allow_networks`
its address, and it enforces that on the address actually connected to, not on the host name in
the URL.

Every way a photo can fail ends as a `PhotoError` whose `reason` is a stable slug that the table
stores as `failed:<reason>`, so one bad photo never stops a run:

    invalid_url, unsupported_scheme, userinfo_in_url, refused_address, too_many_redirects,
    http_<status>, timeout, connection_error, too_large, too_many_pixels, not_an_image

    async with PhotoFetcher(settings.photos) as fetcher:
        results = await fetcher.fetch_all([sale.image_url for sale in batch])
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import random
import sys
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Final

import aiohttp
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError
from yarl import URL

from smartgo_exporter.address_guard import (
    AddressGuard,
    GuardedResolver,
    RefusedAddress,
    literal_address,
)
from smartgo_exporter.errors import PhotoError

if TYPE_CHECKING:
    from smartgo_exporter.config import PhotoConfig

MAX_REDIRECTS: Final = 5
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES: Final = 64 * 1024

# Only formats a browser shows as a product photo: every further Pillow plugin is more parser
# surface for hostile bytes, and some (EPS) would start external programs when decoded.
_ACCEPTED_FORMATS: Final = ("JPEG", "PNG", "WEBP", "GIF", "AVIF", "BMP")
# EXIF orientations 5 to 8 turn the picture a quarter turn, so width and height swap on display.
_QUARTER_TURNS: Final = frozenset({5, 6, 7, 8})


@dataclass(frozen=True, slots=True)
class Photo:
    """A photo that was downloaded and checked to be an image within the configured limits.

    `url` is the URL as the source gave it, even when the photo came from a redirect, so the
    pipeline can match the photo back to its sale. `width` and `height` are the displayed size
    (after EXIF rotation) when the file carries its EXIF before the pixels, else the stored size.
    `format` is Pillow's name for it ("JPEG", "PNG", "WEBP", "GIF", ...).
    """

    url: str
    data: bytes = field(repr=False)
    sha256: str
    width: int
    height: int
    format: str


class PhotoFetcher:
    """Downloads photos over one HTTP connection pool, at most `config.concurrency` at a time.

    The limit holds across every caller of one fetcher, `fetch` and `fetch_all` alike, so a
    pipeline can share one fetcher between batches without overloading the photo servers.
    Use it as an async context manager, inside one event loop:

        async with PhotoFetcher(config) as fetcher:
            photo = await fetcher.fetch("https://cdn.example.com/p/123.jpg")

    `fetch` raises PhotoError and nothing else for anything wrong with the photo, its URL or
    its server. A photo gets `config.attempts` tries within `config.timeout_seconds` in all;
    only failures that can pass (connection errors, 429, 5xx) are tried again.
    """

    def __init__(self, config: PhotoConfig) -> None:
        self._config = config
        self._guard = AddressGuard(config.allow_networks, config.allow_hosts)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PhotoFetcher:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._guard.permits))
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={
                "User-Agent": self._config.user_agent,
                "Accept": "image/*",
                # Photos are compressed already; gzip on top would only cost CPU on both ends.
                "Accept-Encoding": "identity",
            },
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str) -> Photo:
        """Download one photo, check it is an image, and hash it; raise PhotoError if not.

        The time limit starts when the photo gets a slot, not while it waits for one, so a long
        queue in `fetch_all` does not turn into timeouts.
        """
        target = _parse(url)
        self._check_destination(url, target)
        async with self._slots:
            data = await self._download(url, target)
            # Pillow releases the GIL while it parses, and a large PNG takes milliseconds to
            # check: off the event loop, the other downloads keep flowing meanwhile.
            return await asyncio.to_thread(_inspect, url, data, self._config.max_pixels)

    async def fetch_all(self, urls: Sequence[str]) -> list[Photo | PhotoError]:
        """Fetch every URL; the result at each position is its Photo or the PhotoError why not.

        Only as many workers as there are slots take URLs in turn, instead of one task per URL,
        so a batch of many thousand photos costs no more memory than a batch of a few.
        """
        results: list[Photo | PhotoError] = []
        async with contextlib.aclosing(self.fetch_parts(urls, part_bytes=sys.maxsize)) as parts:
            async for part in parts:
                results += part
        return results

    async def fetch_parts(
        self, urls: Sequence[str], part_bytes: int | None = None
    ) -> AsyncGenerator[list[Photo | PhotoError], None]:
        """Fetch every URL as `fetch_all` does, handing the results over in order, in parts of
        about `part_bytes` of photos (`config.part_bytes` by default).

        A batch of camera-size photos then costs memory by the part, not by the batch: downloads
        stop starting while the photos fetched and not yet handed over come to `part_bytes`. A
        part ends at the first photo that brings it to `part_bytes` (or at the last URL), so
        where parts end depends on the photos alone, not on which download finished first.
        Use it in `contextlib.aclosing`, so that downloads stop when the caller does.
        """
        limit = self._config.part_bytes if part_bytes is None else part_bytes
        results: list[Photo | PhotoError | None] = [None] * len(urls)
        sizes = [0] * len(urls)
        positions = iter(range(len(urls)))
        held = 0
        changed = asyncio.Condition()

        def room() -> bool:
            return held < limit

        async def work() -> None:
            nonlocal held
            while True:
                # Room is checked and a URL taken at once: so every URL before the last one
                # taken is fetched or in flight, and the next part can always complete.
                async with changed:
                    await changed.wait_for(room)
                    position = next(positions, None)
                if position is None:
                    return
                try:
                    result: Photo | PhotoError = await self.fetch(urls[position])
                except PhotoError as error:
                    result = error
                async with changed:
                    results[position] = result
                    if isinstance(result, Photo):
                        sizes[position] = len(result.data)
                        held += sizes[position]
                    changed.notify_all()

        async with asyncio.TaskGroup() as group:
            for _ in range(min(self._config.concurrency, len(urls))):
                group.create_task(work())
            start = 0
            while start < len(urls):
                async with changed:
                    end = await changed.wait_for(
                        functools.partial(_part_end, results, sizes, start, limit)
                    )
                    part = [result for result in results[start:end] if result is not None]
                    results[start:end] = [None] * (end - start)
                    held -= sum(sizes[start:end])
                    changed.notify_all()
                start = end
                yield part

    async def _download(self, url: str, target: URL) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.timeout_seconds
        try:
            async with asyncio.timeout_at(deadline):
                attempt = 1
                while True:
                    try:
                        return await self._follow(url, target)
                    except _Transient as failure:
                        if attempt >= self._config.attempts:
                            raise failure.error from None
                        delay = failure.retry_after
                        if delay is None:
                            delay = self._config.backoff_seconds * 2 ** (attempt - 1)
                            delay *= random.uniform(1.0, 1.5)
                        if loop.time() + delay >= deadline:
                            raise failure.error from None
                        await asyncio.sleep(delay)
                        attempt += 1
        except TimeoutError:
            raise PhotoError(
                url, "timeout", f"no photo within {self._config.timeout_seconds:g} s"
            ) from None

    async def _follow(self, url: str, target: URL) -> bytes:
        """One attempt: request `target`, following redirects ourselves.

        aiohttp's own redirect handling would connect to each hop before we could look at it;
        here every hop passes the same scheme, userinfo and address checks as the first URL.
        """
        if self._session is None:
            raise RuntimeError("PhotoFetcher is used outside `async with`")
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with self._session.get(target, allow_redirects=False) as response:
                    if response.status in _REDIRECT_STATUSES:
                        target = self._redirect_target(url, target, response)
                        continue
                    if response.status == 429 or response.status >= 500:
                        raise _Transient(
                            PhotoError(url, f"http_{response.status}"),
                            _retry_after(response.headers.get("Retry-After")),
                        )
                    if not 200 <= response.status < 300:
                        raise PhotoError(url, f"http_{response.status}")
                    return await self._read_body(url, response)
            except aiohttp.ClientSSLError as error:
                # A certificate or TLS mismatch will be the same on the next attempt.
                raise PhotoError(url, "connection_error", _describe(error)) from None
            except aiohttp.ClientConnectorError as error:
                if isinstance(error.os_error, RefusedAddress):
                    raise PhotoError(url, "refused_address", str(error.os_error)) from None
                raise _Transient(PhotoError(url, "connection_error", _describe(error))) from None
            except aiohttp.InvalidURL:
                raise PhotoError(url, "invalid_url", f"{target.host} is not usable") from None
            except aiohttp.ClientError as error:
                raise _Transient(PhotoError(url, "connection_error", _describe(error))) from None
        raise PhotoError(url, "too_many_redirects", f"more than {MAX_REDIRECTS}")

    def _redirect_target(self, url: str, current: URL, response: aiohttp.ClientResponse) -> URL:
        location = response.headers.get("Location")
        if location is None:
            raise PhotoError(url, f"http_{response.status}", "redirect without a Location")
        try:
            target = current.join(URL(location))
        except ValueError:
            raise PhotoError(url, "invalid_url", "redirect Location is not a URL") from None
        self._check_destination(url, target, hop=True)
        return target

    def _check_destination(self, url: str, target: URL, *, hop: bool = False) -> None:
        """Refuse what must not be requested, before any connection is opened.

        An IP-literal host is checked here because aiohttp connects to literals without asking
        the resolver; names are checked by `GuardedResolver` once they are resolved. The scheme
        an allowed host is limited to is checked here too, since the resolver never sees it.
        """
        where = "redirect to " if hop else ""
        if not target.scheme:
            raise PhotoError(url, "invalid_url", f"{where}URL without a scheme")
        if target.scheme not in ("http", "https"):
            raise PhotoError(url, "unsupported_scheme", f"{where}scheme {target.scheme!r}")
        if not target.host:
            raise PhotoError(url, "invalid_url", f"{where}URL without a host")
        if target.raw_user is not None or target.raw_password is not None:
            raise PhotoError(url, "userinfo_in_url", f"{where}URL with a user name or password")
        host, port = target.raw_host or target.host, target.port or 0
        schemes = self._guard.schemes_for(host, port)
        if schemes is not None and target.scheme not in schemes:
            allowed = " or ".join(sorted(schemes))
            raise PhotoError(
                url, "refused_address", f"{where}{host}:{port} is allowed over {allowed} only"
            )
        try:
            address = literal_address(target.host)
        except ValueError:
            raise PhotoError(
                url, "invalid_url", f"{where}{target.host} is not an address"
            ) from None
        if address is not None and not self._guard.permits(address, host, port):
            raise PhotoError(
                url, "refused_address", f"{where}{address} on port {port} is not allowed"
            )

    async def _read_body(self, url: str, response: aiohttp.ClientResponse) -> bytes:
        limit = self._config.max_bytes
        if response.content_length is not None and response.content_length > limit:
            response.close()
            raise PhotoError(url, "too_large", f"Content-Length over {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                # Closing drops the connection: draining it could mean reading forever.
                response.close()
                raise PhotoError(url, "too_large", f"body over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _part_end(
    results: Sequence[object | None], sizes: Sequence[int], start: int, limit: int
) -> int:
    """Where the part from `start` ends, once it is complete: after the photo that brings it to
    `limit` bytes, or after the last URL; 0 (false, for `Condition.wait_for`) while a result it
    needs is still missing."""
    total = 0
    for position in range(start, len(results)):
        if results[position] is None:
            return 0
        total += sizes[position]
        if total >= limit:
            return position + 1
    return len(results)


class _Transient(Exception):
    """A failure another attempt may not have; `retry_after` is the server's wish, in seconds."""

    def __init__(self, error: PhotoError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def _parse(url: str) -> URL:
    try:
        return URL(url)
    except (TypeError, ValueError):
        raise PhotoError(url, "invalid_url") from None


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _describe(error: BaseException) -> str:
    """The kind of failure and the OS's words for it, but never a URL, header or body."""
    cause = error.os_error if isinstance(error, aiohttp.ClientConnectorError) else error
    reason = getattr(cause, "strerror", None) or type(cause).__name__
    return f"{type(error).__name__}: {reason}"


class _TooManyPixels(Exception):
    """The header announces more pixels than the limit; raised before anything is decoded."""


def _inspect(url: str, data: bytes, max_pixels: int) -> Photo:
    """Check that `data` is one image within `max_pixels`, without decoding it where avoidable.

    The pixel count is checked from the header before anything is decoded. Pillow's own
    decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) counts too, so its warning is only ever
    raised for an image refused here anyway, and its error maps to the same reason.
    """
    limit = max_pixels
    if Image.MAX_IMAGE_PIXELS is not None:
        limit = min(limit, int(Image.MAX_IMAGE_PIXELS))
    try:
        with Image.open(io.BytesIO(data), formats=_ACCEPTED_FORMATS) as image:
            width, height = image.size
            image_format = image.format or "unknown"
            if width * height > limit:
                raise _TooManyPixels(f"{width}x{height} is over {limit} pixels")
            if "exif" in image.info:
                orientation = image.getexif().get(ExifTags.Base.Orientation)
                if orientation in _QUARTER_TURNS:
                    width, height = height, width
            _check_complete(image, data)
    except (_TooManyPixels, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise PhotoError(url, "too_many_pixels", str(error)) from None
    except UnidentifiedImageError:
        raise PhotoError(
            url, "not_an_image", f"not readable as any of {', '.join(_ACCEPTED_FORMATS)}"
        ) from None
    # Pillow's parsers answer hostile bytes with many exception types (OSError, SyntaxError,
    # struct.error, IndexError, ...); any of them means the same thing here.
    except Exception as error:
        raise PhotoError(url, "not_an_image", f"{type(error).__name__}: {error}") from None
    return Photo(
        url=url,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        width=width,
        height=height,
        format=image_format,
    )


def _check_complete(image: ImageFile.ImageFile, data: bytes) -> None:
    """Raise if the file is cut short, decoding only for formats that leave no other way.

    PNG: `verify()` reads every chunk against its CRC without inflating the pixels. WebP:
    Pillow has already parsed the whole container to open it. JPEG: `verify()` does nothing, and
    a decode would cost milliseconds, but a complete file has its end-of-image marker after the
    last start-of-scan marker, and scan data cannot contain that byte pair. GIF, BMP and AVIF
    offer no such shortcut, so their first frame is decoded; they are rare for product photos.
    """
    if image.format == "PNG":
        image.verify()
    elif image.format in ("JPEG", "MPO"):
        # Pillow sets `tile` on reaching the image's own start of scan, so any later one found
        # here belongs to the image too, not to a thumbnail embedded in its headers.
        last_scan = data.rfind(b"\xff\xda")
        if not image.tile or data.rfind(b"\xff\xd9") < last_scan:
            raise OSError("JPEG data ends before its end-of-image marker")
    elif image.format != "WEBP":
        image.load()
