"""Property-based tests of the two places where outside input becomes the exporter's own values.

The config loader turns any TOML-shaped data into a valid `Settings` or a `ConfigError` naming the
key at fault; the row validator turns any source row into a `Sale` or an `InvalidSale`. Neither
may crash with another exception, and money is never coerced: a price is kept exactly as the
source wrote it, or refused.

The examples are bounded and derandomized (the same ones every run, no example database in the
checkout), so the suite stays fast and a failure reproduces.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from smartgo_exporter.config import Settings
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.errors import ConfigError, InvalidSale
from smartgo_exporter.sales import (
    ISO_4217,
    MONEY_PRECISION,
    MONEY_SCALE,
    SALE_FIELDS,
    Sale,
    SaleWarning,
    parse_sale,
)
from tests.sales import TITLE

BOUNDED = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
FEWER = settings(BOUNDED, max_examples=60)
"""For the config loader, where each example validates a whole Settings."""
NOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
CENT = Decimal("0.01")
MONEY_LIMIT = Decimal(10) ** (MONEY_PRECISION - MONEY_SCALE)

# --- TOML-shaped data ------------------------------------------------------------------------

HOSTILE_TEXT = st.sampled_from(
    [
        "",
        " ",
        "America",
        "Europe/",
        "../../etc/passwd",
        "UTC\x00",
        "env://SGX_PROPERTY_TEST_NOT_SET",
        "file:///nonexistent/sgx-secret",
        "sqlite:///relative.db",
        "sqlite:////absolute.db",
        "postgresql+psycopg://user:pw@db/sales",
        "not a url",
        "sales; DROP TABLE sales",
        "0 3 * * *",
        "cron(0 3 * * ? *)",
        "* * * * * *",
        "60 25 32 13 8",
        "sql",
        "rest",
        "local",
        "titan",
        "sqlite",
        "dynamodb",
        "glue",
        "s3tables",
        "page",
        "cursor",
        "pad",
        "crop",
        "DEBUG",
        "127.0.0.0/8",
        "300.1.1.1/99",
        "1e400",
        "-1",
        "384",
    ]
)
TOML_SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.text(max_size=12),
    HOSTILE_TEXT,
    st.datetimes(timezones=st.none() | st.just(UTC)),
    st.dates(),
    st.times(),
)
TOML_VALUES: st.SearchStrategy[Any] = st.recursive(
    TOML_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8) | HOSTILE_TEXT, inner, max_size=3)
    ),
    max_leaves=8,
)


def section_keys(section: str) -> list[str]:
    """The keys a section knows (of every backend, for the tagged ones), and some it does not."""
    annotation = Settings.model_fields[section].annotation
    models = getattr(annotation, "__args__", None) or (annotation,)
    known: set[str] = set()
    for model in models:
        for name, field in getattr(model, "model_fields", {}).items():
            known.add(field.alias or name)
    return sorted(known | {"unknown_key", "Type", "columns.sale_id"})


def section_data(section: str) -> st.SearchStrategy[Any]:
    """A section as a TOML file could hold it: mostly a table of its own keys, sometimes not."""
    keys = section_keys(section)
    table = st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), TOML_VALUES, max_size=6)
    return table | TOML_VALUES


SECTIONS = [name for name in Settings.model_fields if name != "source"]
MINIMAL_SOURCE = {"type": "sql", "url": "sqlite:////tmp/sgx-property/pos.db", "table": "sales"}


def load_or_config_error(data: dict[str, Any]) -> Settings | ConfigError:
    try:
        return load_config(None, **data)
    except ConfigError as error:
        return error


@pytest.mark.parametrize("section", SECTIONS)
@FEWER
@given(data=st.data())
def test_any_value_of_a_section_gives_settings_or_a_config_error_naming_that_section(
    section: str, data: st.DataObject
) -> None:
    value = data.draw(section_data(section), label=section)
    outcome = load_or_config_error({"source": dict(MINIMAL_SOURCE), section: value})
    if isinstance(outcome, ConfigError):
        assert outcome.key.split(".")[0] == section, outcome
        assert outcome.reason
    else:
        assert isinstance(outcome, Settings)


@FEWER
@given(
    source=st.dictionaries(st.sampled_from(section_keys("source")), TOML_VALUES, max_size=6),
    tagged=st.sampled_from(["sql", "rest", None]),
)
def test_any_source_section_gives_settings_or_a_config_error_naming_the_source(
    source: dict[str, Any], tagged: str | None
) -> None:
    if tagged is not None:
        source["type"] = tagged
    outcome = load_or_config_error({"source": source})
    if isinstance(outcome, ConfigError):
        assert outcome.key.split(".")[0] == "source", outcome
    else:
        assert outcome.source.type in ("sql", "rest")


@FEWER
@given(zone=st.text(max_size=20) | HOSTILE_TEXT | st.timezone_keys())
@example(zone="America")  # a folder of the tz database, once an IsADirectoryError
def test_a_time_zone_is_a_real_tz_database_zone_or_a_config_error(zone: str) -> None:
    outcome = load_or_config_error({"source": dict(MINIMAL_SOURCE), "export": {"timezone": zone}})
    if isinstance(outcome, ConfigError):
        assert outcome.key == "export.timezone"
    else:
        assert ZoneInfo(outcome.export.timezone).key == zone


# --- source rows -----------------------------------------------------------------------------

PLAUSIBLE_TEXT = st.sampled_from(
    [
        "S-1",
        "1001",
        " 7 ",
        "EUR",
        "eur ",
        "ısk",
        "EUU",
        "19.99",
        "19.999",
        "-5.00",
        "1_000",
        "\uff11\uff19.\uff19\uff19",
        "1e3",
        "1E+30",
        "NaN",
        "Infinity",
        "0x10",
        "2026-11-26 14:30:00",
        "2026-11-26T14:30:00Z",
        "2026-11-26T14:30:00+14:00",
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59-05:00",
        "yesterday",
        "https://user:secret@photos.example/1.jpg",
        "https://photos.example/1.jpg?X-Amz-Signature=abc",
        "http://[::1",
        "\x00",
    ]
)
HOSTILE_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.decimals(),
    st.text(max_size=20),
    PLAUSIBLE_TEXT,
    st.binary(max_size=12),
    st.datetimes(timezones=st.none() | st.timezones()),
    st.dates(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def valid_row(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "sale_id": "S-1",
        "tenant_id": "7",
        "product_id": "SKU-1",
        "sold_at": datetime(2026, 11, 26, 14, 30),
        "sale_price": Decimal("19.99"),
        "currency": "EUR",
    }
    raw.update(changes)
    return raw


def parse(raw: dict[str, Any], zone: str = "Europe/Paris", **options: Any) -> Sale | InvalidSale:
    """The Sale a row becomes, or the InvalidSale saying why not; any other exception escapes.
    `options` go to `parse_sale` (`currency_case`, `warnings`)."""
    try:
        return parse_sale(raw, position=3, naive_tz=ZoneInfo(zone), now=NOW, **options)
    except InvalidSale as invalid:
        return invalid


@BOUNDED
@given(
    raw=st.dictionaries(
        st.sampled_from([*SALE_FIELDS, "extra"]) | st.text(max_size=5), HOSTILE_VALUES, max_size=16
    )
)
def test_any_row_gives_a_sale_or_an_invalid_sale_naming_a_field(raw: dict[str, Any]) -> None:
    sale = parse(raw)
    if isinstance(sale, InvalidSale):
        assert sale.field in SALE_FIELDS
        assert sale.row
    else:
        assert sale.sold_at.tzinfo is UTC
        assert sale.sale_price == sale.sale_price.quantize(CENT)


@BOUNDED
@given(field=st.sampled_from(SALE_FIELDS), value=HOSTILE_VALUES)
@example(field="sold_at", value="0001-01-01T00:00:00+05:00")  # once an OverflowError
@example(field="sold_at", value=datetime(9999, 12, 31, 23, 0))
@example(field="currency", value="ısk")  # upper-cased to ISK by str.upper()
def test_one_hostile_field_in_a_valid_row_gives_a_sale_or_names_that_field(
    field: str, value: Any
) -> None:
    sale = parse(valid_row(**{field: value}))
    if isinstance(sale, InvalidSale):
        assert (sale.row, sale.field) in (("S-1", field), ("3", "sale_id"))
    else:
        assert isinstance(sale, Sale)
        assert sale.currency.isascii()


def exact_amount(value: Decimal | int | float | str) -> Decimal | None:
    """The number the source wrote, exactly: a float by its shortest round-trip form; None for
    text that is not a plainly written number (Decimal() would also read "1_000" or "１９")."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        plain = re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value.strip(), re.ASCII)
        return Decimal(value.strip()) if plain else None
    return Decimal(value)


MONEY = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.decimals(allow_nan=False, allow_infinity=False, places=2, min_value=-1, max_value=10**11),
    st.decimals(allow_nan=False, allow_infinity=False, min_value=0, max_value=10**11),
    st.integers(min_value=-10, max_value=10**11),
    st.floats(min_value=0, max_value=1e11),
    st.integers(min_value=0, max_value=10**8).map(lambda cents: cents / 100),
    st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=0, max_value=10**6).map(
        lambda amount: f" {amount} "
    ),
)


@BOUNDED
@given(price=MONEY)
@example(price=Decimal("1E+30"))  # once an InvalidOperation from quantize, crashing the run
@example(price="1E+30")
@example(price=10**40)
@example(price="1_000")  # Decimal() reads it as 1000
@example(price="\uff11\uff19.\uff19\uff19")  # full-width digits, which Decimal() reads too
def test_a_price_is_kept_exactly_or_refused_never_rounded(
    price: Decimal | int | float | str,
) -> None:
    amount = exact_amount(price)
    acceptable = (
        amount is not None and 0 <= amount < MONEY_LIMIT and amount == amount.quantize(CENT)
    )
    sale = parse(valid_row(sale_price=price))
    if isinstance(sale, InvalidSale):
        assert sale.field == "sale_price"
        assert not acceptable, f"{price!r} is a valid amount, refused as {sale.reason}"
    else:
        assert acceptable, f"{price!r} was taken as {sale.sale_price}"
        assert sale.sale_price == amount
        assert sale.sale_price.as_tuple().exponent == -MONEY_SCALE


@BOUNDED
@given(price=st.floats(min_value=0, max_value=1e9))
def test_a_float_that_is_not_whole_cents_is_refused(price: float) -> None:
    written = Decimal(repr(price))
    sale = parse(valid_row(sale_price=price))
    if written == written.quantize(CENT):
        assert isinstance(sale, Sale)
        assert sale.sale_price == written
    else:
        assert isinstance(sale, InvalidSale)
        assert sale.field == "sale_price"
        assert sale.reason.startswith("more than two decimal places")


@BOUNDED
@given(text=st.text(max_size=12))
def test_a_price_written_as_text_is_plain_ascii_digits_or_refused(text: str) -> None:
    sale = parse(valid_row(sale_price=text))
    if isinstance(sale, InvalidSale):
        assert sale.field == "sale_price"
    else:
        assert text.strip().isascii()
        assert sale.sale_price == Decimal(text.strip())


@BOUNDED
@given(field=st.sampled_from(["title", "brand", "category", "condition"]), text=st.text())
@example(field="title", text=TITLE)
@example(field="brand", text="")
def test_descriptive_text_is_kept_exactly_as_the_source_wrote_it(field: str, text: str) -> None:
    sale = parse(valid_row(**{field: text}))
    assert isinstance(sale, Sale)
    assert getattr(sale, field) == text


CODES_IN_ANY_CASE = st.tuples(
    st.sampled_from(sorted(ISO_4217)), st.lists(st.booleans(), min_size=3, max_size=3)
).map(
    lambda drawn: (
        drawn[0],
        "".join(c.lower() if low else c for c, low in zip(*drawn, strict=True)),
    )
)
"""(an ISO 4217 code, the code as a source may write it: some of its letters lower-cased)."""


@BOUNDED
@given(codes=CODES_IN_ANY_CASE)
def test_a_valid_code_in_any_case_lands_upper_case_with_a_warning_if_it_was_not(
    codes: tuple[str, str],
) -> None:
    code, written = codes
    warnings: list[SaleWarning] = []
    sale = parse(valid_row(currency=written), warnings=warnings)
    assert isinstance(sale, Sale)
    assert sale.currency == code
    assert [w.reason for w in warnings] == (["currency_normalised"] if written != code else [])


@BOUNDED
@given(codes=CODES_IN_ANY_CASE)
def test_with_reject_a_valid_code_lands_only_when_written_upper_case(
    codes: tuple[str, str],
) -> None:
    code, written = codes
    sale = parse(valid_row(currency=written), currency_case="reject")
    if isinstance(sale, InvalidSale):
        assert sale.field == "currency"
        assert written != code
    else:
        assert sale.currency == written == code


@BOUNDED
@given(
    moment=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()
    )
)
def test_an_aware_sold_at_is_the_same_instant_in_utc(moment: datetime) -> None:
    sale = parse(valid_row(sold_at=moment))
    if isinstance(sale, InvalidSale):
        assert sale.field == "sold_at"
        assert "in the future" in sale.reason
        assert moment > NOW
    else:
        # The same instant (compared by timestamp: aware datetimes in a DST gap or fold never
        # compare equal across zones).
        assert sale.sold_at.timestamp() == moment.timestamp()
        assert sale.sold_at.tzinfo is UTC


@BOUNDED
@given(day=st.dates(max_value=date(2026, 11, 25)), at=st.times())
@example(day=date(1, 1, 1), at=time(3, 0))
def test_a_naive_sold_at_is_wall_clock_time_in_the_sources_zone(day: date, at: time) -> None:
    wall_clock = datetime.combine(day, at)
    sale = parse(valid_row(sold_at=wall_clock), zone="Etc/GMT-14")
    if isinstance(sale, InvalidSale):
        # Wall-clock time 14 hours east of UTC on the first day of year 1 has no UTC instant.
        assert sale.field == "sold_at"
        assert "out of range" in sale.reason
        assert wall_clock < datetime(1, 1, 1, 14)
    else:
        assert sale.sold_at == datetime.combine(day, at, UTC) - timedelta(hours=14)
