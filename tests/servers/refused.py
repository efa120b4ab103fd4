"""A port on 127.0.0.1 where every connection is refused, for the whole test session.

A port bound and then closed again is free for any process to take before the test connects
(the next test's server, a parallel run), so the socket stays bound, and never listens, until
the session ends.
"""

from __future__ import annotations

import socket

_HELD = socket.socket()
_HELD.bind(("127.0.0.1", 0))


def refused_port() -> int:
    """The held port: connecting to it is refused at once."""
    return int(_HELD.getsockname()[1])
