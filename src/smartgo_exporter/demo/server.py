"""The demo's photo server: a real HTTP server, so demo photos take the production fetch path."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from smartgo_exporter.errors import ExporterError

DEFAULT_PHOTO_HOST = "127.0.0.1"
DEFAULT_PHOTO_PORT = 8765
"""Fixed, because the photo URLs stored in the demo database name it."""

PHOTO_CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
}


class DemoError(ExporterError):
    """The demo cannot be set up as asked; the message says what to do about it."""


def _photo_app(folder: Path) -> web.Application:
    root = folder.resolve()

    async def photo(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        content_type = PHOTO_CONTENT_TYPES.get(os.path.splitext(name)[1].lower())
        path = root / name
        if content_type is None or name.startswith(".") or path.parent != root:
            raise web.HTTPNotFound()
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/photos/{name}", photo)
    return app


class ServerThread:
    """An aiohttp application on its own event loop in a daemon thread, so callers stay
    synchronous; the demo's photo server and its local Bedrock both run this way.

    It binds `host` and `port`, or, given a `listener` (a bound socket), serves on that
    instead and closes it when it stops.
    """

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        name: str,
        listener: socket.socket | None = None,
    ) -> None:
        self._host, self._port, self._listener = host, port, listener
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)

    def start(self) -> int:
        """Listen, and return the bound port (port 0 picks a free one); OSError if refused."""
        self._thread.start()
        try:
            return asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(timeout=30)
        except BaseException:
            self.stop()
            raise

    async def _open(self) -> int:
        await self._runner.setup()
        site: web.BaseSite
        if self._listener is not None:
            site = web.SockSite(self._runner, self._listener)
        else:
            site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        bound: int = self._runner.addresses[0][1]
        return bound

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


@contextlib.contextmanager
def serve_photos(
    folder: Path,
    host: str = DEFAULT_PHOTO_HOST,
    port: int = DEFAULT_PHOTO_PORT,
    *,
    listener: socket.socket | None = None,
) -> Iterator[str]:
    """Serve `folder` as /photos/<name> over HTTP while the block runs; yield the base URL.

    A real HTTP server, so demo photos take the exporter's production fetch path (URL guard,
    retries, content checks). Only photo files are served, with their image Content-Type;
    anything else is 404. The port is fixed by default because the URLs stored in the demo
    database name it; port 0 picks a free one (for tests). A taken port raises DemoError.

    `listener`, a TCP socket already bound, is served instead of binding `host` and `port`,
    and closed when the block ends. It is for a caller that must know the port before the
    server starts, because the photo URLs it stores name it: a socket it keeps bound from the
    moment it learns the port leaves no moment in which another process could take the port.
    """
    if listener is not None:
        host, port = listener.getsockname()[:2]
    server = ServerThread(
        _photo_app(folder), host, port, name=f"demo-photos-{port}", listener=listener
    )
    try:
        bound = server.start()
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise DemoError(
                f"port {port} on {host} is already in use, and the demo's photo "
                f"URLs name that port; stop whatever listens there (an earlier demo?), or "
                f"rebuild the demo on another port"
            ) from None
        raise DemoError(
            f"cannot serve the demo photos on {host}:{port}: {error.strerror or error}"
        ) from None
    try:
        yield photo_base_url(host, bound)
    finally:
        server.stop()


def photo_base_url(host: str = DEFAULT_PHOTO_HOST, port: int = DEFAULT_PHOTO_PORT) -> str:
    """The base URL `serve_photos(host=host, port=port)` serves, known before it starts."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
