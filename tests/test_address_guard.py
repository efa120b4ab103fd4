"""The address guard's `photos.allow_hosts`: which host, port and scheme an entry lets through.

The fetcher's tests (test_photo_fetcher.py) show the guard refusing connections to real
listeners; these pin down what one entry admits, including ports no test may listen on.
"""

from __future__ import annotations

import ipaddress

import pytest

from smartgo_exporter.address_guard import AddressGuard, AllowedHost
from smartgo_exporter.errors import ConfigError

PHOTO_HOST = ipaddress.ip_address("10.0.0.5")


def test_a_private_address_is_permitted_only_on_the_port_its_entry_names() -> None:
    guard = AddressGuard([], ["10.0.0.5:8080"])

    assert guard.permits(PHOTO_HOST, "10.0.0.5", 8080)
    assert not guard.permits(PHOTO_HOST, "10.0.0.5", 5432)
    assert not guard.permits(PHOTO_HOST, "10.0.0.5", 6379)


@pytest.mark.parametrize(("entry", "port"), [("http://10.0.0.5", 80), ("https://10.0.0.5", 443)])
def test_an_entry_with_a_scheme_and_no_port_allows_that_schemes_default_port(
    entry: str, port: int
) -> None:
    allowed = AllowedHost.parse(entry)

    assert allowed.port == port
    assert allowed.admits("10.0.0.5", port)
    assert not allowed.admits("10.0.0.5", 8080)


def test_an_entry_without_a_scheme_allows_both_and_one_with_a_scheme_that_one_only() -> None:
    guard = AddressGuard([], ["10.0.0.5:8080", "https://photos.internal:8443"])

    assert guard.schemes_for("10.0.0.5", 8080) == {"http", "https"}
    assert guard.schemes_for("photos.internal", 8443) == {"https"}
    assert guard.schemes_for("photos.internal", 8080) is None


def test_an_address_entry_admits_every_spelling_of_its_address_and_no_name() -> None:
    allowed = AllowedHost.parse("127.0.0.1:8080")

    assert allowed.admits("2130706433", 8080)  # 127.0.0.1 as one decimal number
    assert allowed.admits("0177.0.0.1", 8080)
    assert not allowed.admits("localhost", 8080)


def test_a_name_entry_admits_that_name_in_any_case_and_no_other() -> None:
    guard = AddressGuard([], ["Photos.Internal:8080"])

    assert guard.permits(PHOTO_HOST, "photos.internal", 8080)
    assert not guard.permits(PHOTO_HOST, "photos.internal.evil.example", 8080)
    assert not guard.permits(PHOTO_HOST, "10.0.0.5", 8080)


def test_an_ipv6_entry_goes_in_brackets() -> None:
    guard = AddressGuard([], ["[fd00::5]:8080"])

    assert guard.permits(ipaddress.ip_address("fd00::5"), "fd00::5", 8080)
    assert not guard.permits(ipaddress.ip_address("fd00::5"), "fd00::5", 8081)


def test_an_allowed_host_opens_no_other_private_address() -> None:
    guard = AddressGuard([], ["photos.internal:8080"])

    assert not guard.permits(ipaddress.ip_address("10.0.0.6"), "other.internal", 8080)
    assert not guard.permits(ipaddress.ip_address("169.254.169.254"), "169.254.169.254", 80)


def test_a_bad_entry_given_to_the_guard_directly_names_the_setting() -> None:
    with pytest.raises(ConfigError) as raised:
        AddressGuard([], ["10.0.0.5"])

    assert raised.value.key == "photos.allow_hosts"
