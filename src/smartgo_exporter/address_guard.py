"""Which addresses the exporter may connect to, checked where the connection is made.

Photo URLs come from the point-of-sale database, so they are untrusted: a URL, a redirect or a
DNS answer could point at the cloud metadata service or a private network. `AddressGuard`
says whether an address is one to connect to; `GuardedResolver` applies it to every DNS answer
aiohttp would connect to, and `literal_address` reads the IP literals that skip the resolver
the way the system does. Kept apart from the fetcher: this is the security boundary, and it is
read and tested on its own.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Final

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from smartgo_exporter.errors import ConfigError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


class AddressGuard:
    """Decides whether the exporter may connect to an address.

    Public unicast addresses are permitted. Private, loopback, link-local (which holds the cloud
    metadata service at 169.254.169.254), unspecified, multicast, reserved and unique-local
    addresses are refused unless one of `allow_networks` (CIDRs) contains them. An IPv6 address
    that embeds an IPv4 one (IPv4-mapped, 6to4, NAT64) is judged by the IPv4 address it reaches.
    """

    def __init__(self, allow_networks: Sequence[str]) -> None:
        try:
            self._allowed: tuple[Network, ...] = tuple(
                ipaddress.ip_network(network, strict=False) for network in allow_networks
            )
        except ValueError as error:
            raise ConfigError("photos.allow_networks", str(error)) from None

    def permits(self, address: Address) -> bool:
        reached = _embedded_ipv4(address) or address
        if any(
            candidate in network for candidate in (address, reached) for network in self._allowed
        ):
            return True
        return _is_public(reached)


class GuardedResolver(AbstractResolver):
    """The system resolver, minus the answers the exporter may not connect to.

    aiohttp connects only to what its resolver returns, so filtering here covers names that
    point at private addresses, DNS rebinding, and the numeric spellings getaddrinfo accepts
    (`0x7f.1`). A name left with no permitted address fails with `RefusedAddress`.
    """

    def __init__(self, permits: Callable[[Address], bool]) -> None:
        self._permits = permits
        self._system = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._system.resolve(host, port, family)
        permitted = [answer for answer in answers if self._is_permitted(answer["host"])]
        if not permitted:
            refused = ", ".join(sorted({answer["host"] for answer in answers}))
            raise RefusedAddress(
                f"{host} resolves only to addresses that are not public: {refused}"
            )
        return permitted

    def _is_permitted(self, host: str) -> bool:
        try:
            return self._permits(ipaddress.ip_address(host))
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
