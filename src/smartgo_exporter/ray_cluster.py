"""Reaching Ray for the backfill runner: join or start an instance, and fail fast when it is
not there.

Kept apart from the runner: how to reach a cluster (a mistyped address, Ray not installed) is
the part a user meets first, and its errors say what to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

from smartgo_exporter.errors import RunnerUnavailable

INSTALL_HINT = "pip install 'smartgo-exporter[ray]'"
REACH_SECONDS = 10

try:
    import ray as ray  # re-exported: the runner takes Ray from here, behind this guard
    import ray.data
except ImportError:  # the `ray` extra; backfill imports the runner only when Ray is chosen
    raise RunnerUnavailable(f"the Ray runner needs Ray; install it with: {INSTALL_HINT}") from None


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    if ray.is_initialized():
        yield
        return
    ensure_reachable(address or os.environ.get("RAY_ADDRESS"))
    try:
        if address is None:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except Exception as error:
        where = f"at {address}" if address else "locally"
        raise RunnerUnavailable(f"cannot start or reach Ray {where}: {error}") from error
    try:
        yield
    finally:
        ray.shutdown()


def ensure_reachable(address: str | None) -> None:
    """RunnerUnavailable unless a cluster's `host:port` (or `ray://host:port`) accepts a TCP
    connection within REACH_SECONDS.

    ray.init keeps retrying an address nothing answers at, for minutes, saying so only in its
    own log lines; a mistyped address should fail at once. `auto` and other forms are left to
    ray.init.
    """
    host, colon, port = (address or "").removeprefix("ray://").rpartition(":")
    if not (host and colon and port.isdigit()):
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_SECONDS).close()
    except OSError as error:
        raise RunnerUnavailable(f"cannot reach the Ray cluster at {address}: {error}") from None


@contextlib.contextmanager
def without_ray_progress_bars() -> Iterator[None]:
    """Ray Data's progress bars off for this call: the CLI draws its own, on the same terminal."""
    context = ray.data.DataContext.get_current()
    shown = context.enable_progress_bars
    context.enable_progress_bars = False
    try:
        yield
    finally:
        context.enable_progress_bars = shown
