"""Which addresses the exporter may connect to, checked where the connection is made.

Photo URLs come from the point-of-sale database, so they are untrusted: a URL, a redirect or a
DNS answer could point at the cloud metadata service or a private network. `AddressGuard`
says whether an address is one to connect to, for the host and port a URL names;
`GuardedResolver` applies it to every DNS answer aiohttp would connect to, `literal_address`
reads the IP literals that skip the resolver the way the system does, and `AllowedHost` is one
entry of `photos.allow_hosts`. Kept apart from the fetcher: this is the security boundary, and
it is read and tested on its own.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Final

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from smartgo_exporter.errors import ConfigError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclasses.dataclass(frozen=True, slots=True)
class AllowedHost:
    """One entry of `photos.allow_hosts`: a host that may be private, on one port, by scheme.

    Written `host:port` (both schemes) or `scheme://host[:port]` (that scheme only; the port
    defaults to 80 for http and 443 for https). Without a scheme the port is required, so that
    no entry opens a port its writer did not name. An IPv6 address goes in brackets:
    `[fd00::5]:8080`.

    An entry admits a URL that names its host, not whatever else resolves to the same address:
    a name entry admits that name (and every address it resolves to), an address entry admits
    that address in any spelling the system reads as it.
    """

    schemes: frozenset[str]
    host: str
    """A DNS name as aiohttp hands it to the resolver (lowercase, IDNA), or an address's text."""
    address: Address | None
    port: int

    @classmethod
    def parse(cls, entry: str) -> AllowedHost:
        """The entry `entry` stands for; ValueError, naming it, for anything but the forms above."""
        scheme, separator, _ = entry.partition("://")
        try:
            url = URL(entry if separator else f"//{entry}")
        except ValueError as error:
            raise ValueError(
                f"{entry!r} is not host:port ({error}); an IPv6 address goes in brackets"
            ) from None
        if separator and scheme not in _DEFAULT_PORTS:
            raise ValueError(f"{entry!r}: the scheme must be http or https")
        if not url.raw_host:
            raise ValueError(f"{entry!r} names no host")
        if (
            url.raw_user is not None
            or url.path not in ("", "/")
            or url.query_string
            or url.fragment
        ):
            raise ValueError(f"{entry!r} must be host:port alone, without a path or user")
        port = url.explicit_port if url.explicit_port is not None else _DEFAULT_PORTS.get(scheme)
        if port is None:
            raise ValueError(f"{entry!r} names no port; write host:port, e.g. 10.0.0.5:8080")
        if port == 0:
            raise ValueError(f"{entry!r}: port 0 is no port a server listens on")
        try:
            address = literal_address(url.raw_host)
        except ValueError:
            raise ValueError(f"{entry!r}: {url.raw_host} is not an address") from None
        schemes = frozenset({scheme}) if separator else frozenset(_DEFAULT_PORTS)
        return cls(schemes, _connected_name(url.raw_host), address, port)

    def admits(self, host: str, port: int) -> bool:
        """Whether a URL naming `host` and `port` is the host this entry allows."""
        if port != self.port:
            return False
        if self.address is None:
            return _connected_name(host) == self.host
        try:
            return literal_address(host) == self.address
        except ValueError:
            return False


class AddressGuard:
    """Decides whether the exporter may connect to an address, for the host and port it serves.

    Public unicast addresses are permitted. Private, loopback, link-local (which holds the cloud
    metadata service at 169.254.169.254), unspecified, multicast, reserved and unique-local
    addresses are refused unless one of `allow_networks` (CIDRs) contains them, on any port,
    or one of `allow_hosts` (`AllowedHost`) admits the URL's host and port. An IPv6 address
    that embeds an IPv4 one (IPv4-mapped, 6to4, NAT64) is judged by the IPv4 address it reaches.
    """

    def __init__(self, allow_networks: Sequence[str], allow_hosts: Sequence[str] = ()) -> None:
        try:
            self._allowed: tuple[Network, ...] = tuple(
                ipaddress.ip_network(network, strict=False) for network in allow_networks
            )
        except ValueError as error:
            raise ConfigError("photos.allow_networks", str(error)) from None
        try:
            self._hosts = tuple(AllowedHost.parse(entry) for entry in allow_hosts)
        except ValueError as error:
            raise ConfigError("photos.allow_hosts", str(error)) from None

    def permits(self, address: Address, host: str, port: int) -> bool:
        """Whether to connect to `address` on `port` for a URL whose host is `host`."""
        reached = _embedded_ipv4(address) or address
        if any(
            candidate in network for candidate in (address, reached) for network in self._allowed
        ):
            return True
        if any(entry.admits(host, port) for entry in self._hosts):
            return True
        return _is_public(reached)

    def schemes_for(self, host: str, port: int) -> frozenset[str] | None:
        """The schemes `allow_hosts` lets reach `host` on `port`; None when it names neither.

        The resolver sees no scheme, so the fetcher asks this before each request: an entry
        `https://photos.internal:8443` must not let plain http through to the same port.
        """
        schemes = [entry.schemes for entry in self._hosts if entry.admits(host, port)]
        return frozenset().union(*schemes) if schemes else None


class GuardedResolver(AbstractResolver):
    """The system resolver, minus the answers the exporter may not connect to.

    aiohttp connects only to what its resolver returns, so filtering here covers names that
    point at private addresses, DNS rebinding, and the numeric spellings getaddrinfo accepts
    (`0x7f.1`). A name left with no permitted address fails with `RefusedAddress`. aiohttp
    caches answers by host and port, which is all `permits` decides by, so a cached answer is
    never one this would refuse.
    """

    def __init__(self, permits: Callable[[Address, str, int], bool]) -> None:
        self._permits = permits
        self._system = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._system.resolve(host, port, family)
        permitted = [answer for answer in answers if self._is_permitted(answer["host"], host, port)]
        if not permitted:
            refused = ", ".join(sorted({answer["host"] for answer in answers}))
            raise RefusedAddress(
                f"{host}:{port} resolves only to addresses that are not allowed: {refused}"
            )
        return permitted

    def _is_permitted(self, answer: str, host: str, port: int) -> bool:
        try:
            return self._permits(ipaddress.ip_address(answer), host, port)
        except ValueError:
            return False

    async def close(self) -> None:
        await self._system.close()


class RefusedAddress(OSError):
    """Raised by the resolver; an OSError because that is what aiohttp expects a resolver to raise
    (it arrives wrapped in ClientConnectorDNSError, as `os_error`)."""


def literal_address(host: str) -> Address | None:
    """The address an IP-literal host stands for, None for a name; ValueError for neither.

    `inet_aton` is the parser getaddrinfo uses, so the legacy spellings it accepts (2130706433,
    0177.0.0.1, 127.1) are judged as the address they really reach.
    """
    if ":" in host:
        return ipaddress.IPv6Address(host)
    name = host.rstrip(".")
    try:
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except OSError:
        pass
    if name.replace(".", "").isdigit():
        # aiohttp would take this for a literal and skip the resolver, so it cannot be a name.
        raise ValueError(host)
    return None


def _connected_name(host: str) -> str:
    """`host` as aiohttp resolves it: lowercase, and trailing dots squeezed to one."""
    host = host.lower()
    return host.rstrip(".") + "." if host.endswith("..") else host


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _is_public(address: Address) -> bool:
    # `is_global` alone would let multicast through, and `is_private` alone the shared
    # 100.64.0.0/10 range of carrier-grade NAT: neither is a photo server.
    if (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
    ):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return False
    return address.is_global
