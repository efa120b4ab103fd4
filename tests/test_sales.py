"""Source rows become sales only when every required field is present and sound."""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from smartgo_exporter.errors import InvalidSale
from smartgo_exporter.sales import CurrencyCase, Sale, SaleWarning, is_voided, parse_sale
from tests.sales import TITLE

NOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def row(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "sale_id": 1001,
        "tenant_id": "store-paris",
        "product_id": "SKU-1",
        "sold_at": "2026-11-26 14:30:00",
        "sale_price": "24.50",
        "list_price": "40.00",
        "currency": "EUR",
        "title": "Leather tote",
        "image_url": "https://photos.example/1.jpg",
    }
    raw.update(changes)
    return raw


def parse(raw: dict[str, Any], zone: str = "UTC") -> Sale:
    return parse_sale(raw, position=7, naive_tz=ZoneInfo(zone), now=NOW)


def test_a_complete_row_becomes_a_sale_with_decimal_money_and_utc_time() -> None:
    sale = parse(row())
    assert sale.sale_id == "1001"
    assert sale.sale_price == Decimal("24.50")
    assert sale.list_price == Decimal("40.00")
    assert sale.sold_at == datetime(2026, 11, 26, 14, 30, tzinfo=UTC)


def test_naive_times_are_read_in_the_sources_time_zone() -> None:
    sale = parse(row(sold_at=datetime(2026, 7, 1, 12, 0)), zone="Europe/London")
    assert sale.sold_at == datetime(2026, 7, 1, 11, 0, tzinfo=UTC)


def test_a_float_price_keeps_its_cents_exactly() -> None:
    assert parse(row(sale_price=19.99)).sale_price == Decimal("19.99")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("sale_price", None, "missing"),
        ("sale_price", "-5.00", "negative"),
        ("sale_price", "12.345", "more than two decimal places"),
        ("sale_price", "twelve", "not an amount"),
        ("sale_price", float("nan"), "not a finite amount"),
        ("sale_price", "10000000000.00", "too large"),
        ("currency", "EUU", "not an ISO 4217 code"),
        ("currency", None, "missing"),
        ("tenant_id", "  ", "missing"),
        ("product_id", None, "missing"),
        ("sold_at", "yesterday", "not a timestamp"),
        ("sold_at", "2027-01-01 00:00:00", "in the future"),
    ],
)
def test_a_bad_required_field_is_rejected_naming_row_and_field(
    field: str, value: Any, reason: str
) -> None:
    with pytest.raises(InvalidSale) as raised:
        parse(row(**{field: value}))
    assert raised.value.row == "1001"
    assert raised.value.field == field
    assert reason in raised.value.reason


def test_a_row_without_sale_id_is_named_by_its_position() -> None:
    with pytest.raises(InvalidSale) as raised:
        parse(row(sale_id=None))
    assert (raised.value.row, raised.value.field) == ("7", "sale_id")


def test_descriptive_text_is_kept_exactly_as_the_source_wrote_it() -> None:
    sale = parse(row(title=TITLE, brand="Levi's ", category="", condition=None))
    assert (sale.title, sale.brand, sale.category, sale.condition) == (TITLE, "Levi's ", "", None)


def test_ids_are_keys_without_the_padding_a_char_column_adds() -> None:
    sale = parse(row(sale_id="1001      ", tenant_id="\u00a0store-paris", product_id=" SKU-1 "))
    assert sale.key == ("store-paris", "1001")
    assert sale.product_id == "SKU-1"


def test_a_photo_url_is_fetched_and_kept_without_the_spaces_around_it() -> None:
    sale = parse(row(image_url=" https://photos.example/1.jpg\u00a0"))
    assert sale.image_url == sale.fetch_url == "https://photos.example/1.jpg"
    assert parse(row(image_url="  ")).image_url is None


def parse_noting(raw: dict[str, Any], case: CurrencyCase) -> tuple[Sale, list[SaleWarning]]:
    warnings: list[SaleWarning] = []
    sale = parse_sale(raw, position=7, naive_tz=UTC, currency_case=case, warnings=warnings, now=NOW)
    return sale, warnings


def test_a_lower_case_currency_is_upper_cased_with_a_warning_naming_both() -> None:
    sale, warnings = parse_noting(row(currency=" gbp "), "normalise")
    assert sale.currency == "GBP"
    assert warnings == [
        SaleWarning("store-paris", "1001", "currency_normalised", "'gbp' written as 'GBP'")
    ]


def test_an_upper_case_currency_padded_by_its_column_is_no_warning() -> None:
    sale, warnings = parse_noting(row(currency="EUR  "), "normalise")
    assert (sale.currency, warnings) == ("EUR", [])


def test_a_lower_case_currency_is_rejected_as_invalid_when_the_source_says_reject() -> None:
    with pytest.raises(InvalidSale) as raised:
        parse_noting(row(currency="Eur"), "reject")
    assert (raised.value.row, raised.value.field) == ("1001", "currency")
    assert raised.value.reason == "not an ISO 4217 code: 'Eur' is not upper case"


def test_a_lower_case_unknown_currency_is_rejected_as_unknown_without_a_warning() -> None:
    warnings: list[SaleWarning] = []
    with pytest.raises(InvalidSale, match="not an ISO 4217 code: 'euu'"):
        parse_sale(row(currency="euu"), position=7, naive_tz=UTC, warnings=warnings, now=NOW)
    assert warnings == []


def test_a_row_rejected_for_a_later_field_leaves_no_currency_warning() -> None:
    warnings: list[SaleWarning] = []
    with pytest.raises(InvalidSale, match="list_price"):
        parse_sale(
            row(currency="eur", list_price="lots"),
            position=7,
            naive_tz=UTC,
            warnings=warnings,
            now=NOW,
        )
    assert warnings == []


@pytest.mark.parametrize(
    "value", [True, 1, "Y", "yes", " TRUE ", "t", "1", "voided", datetime(2026, 11, 26, 18, 0)]
)
def test_a_row_marked_voided_by_a_flag_word_or_a_time_is_voided(value: object) -> None:
    assert is_voided(row(voided=value), position=7)


@pytest.mark.parametrize("value", [None, False, 0, "N", "no", "false", "F", "0", ""])
def test_a_row_whose_voided_is_null_or_no_is_not_voided(value: object) -> None:
    assert not is_voided(row(voided=value), position=7)
    assert not is_voided(row(), position=7)


@pytest.mark.parametrize("value", ["maybe", 2, "refunded?"])
def test_a_voided_value_that_is_neither_yes_nor_no_is_refused_naming_the_sale(
    value: object,
) -> None:
    with pytest.raises(InvalidSale) as error:
        is_voided(row(voided=value), position=7)
    assert (error.value.row, error.value.field) == ("1001", "voided")
