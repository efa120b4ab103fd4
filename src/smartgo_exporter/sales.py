"""A sale as the source reports it, validated: the one place source rows are checked.

The SQL and REST sources both turn their rows into `Sale` here, so they reject bad rows the
same way, with the same field named. `public_url` is the one redactor of photo URLs: what the
table, the run record and the logs keep of a URL the source gave.

Text is kept as the source wrote it, with two kinds of field:

- Descriptive text (title, brand, category, condition) is stored byte for byte: spaces, no-break
  spaces and all; NULL stays None and an empty string stays empty, since NULL and '' are two
  things a source can say and a reader can fold them together but not tell them apart again.
  Whoever compares such text (pricing's brand matching) trims it for the comparison only.
- Ids (sale_id, tenant_id, product_id), the currency code and the photo URL are trimmed, and
  blank is missing. An id is a key, not text: a CHAR(n) column pads it with spaces on
  PostgreSQL, and "S-1" there and "S-1" in a VARCHAR must be one sale (the table has always been
  keyed on trimmed ids, so keeping the padding would store every such sale a second time).
  Whitespace around a URL is not part of it (RFC 3986, appendix C), and readers of the table
  open the URL it keeps.

A currency code in the wrong case ("eur") is a valid code written wrongly: `currency_case`
decides whether it is upper-cased, with a `SaleWarning`, or rejected.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from smartgo_exporter.errors import InvalidSale

MONEY_PRECISION, MONEY_SCALE = 12, 2
_MONEY_LIMIT = Decimal(10) ** (MONEY_PRECISION - MONEY_SCALE)
_CENT = Decimal("0.01")
_AMOUNT_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
"""An amount written as text: ASCII digits only, so neither '1_000' nor full-width digits pass."""

_SIGNING_PARAMETERS = frozenset(
    """awsaccesskeyid signature sig expires policy key-pair-id googleaccessid token access_token
    auth api_key apikey password secret client_secret""".split()
)
"""Query parameters of a signed or credentialed URL (S3 SigV2, CloudFront, GCS, Azure SAS, API
keys), lower-cased; every `x-amz-*` and `x-goog-*` parameter counts too (SigV4 presigning)."""

# Active ISO 4217 codes. "EUU" is rejected, because a price in an unknown currency cannot be
# compared with anything; "EUR " is padding, trimmed; "eur" is up to `CurrencyCase`.
ISO_4217 = frozenset(
    """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP
    BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP
    GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR
    KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK
    MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR
    SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS
    UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG""".split()
)

SALE_FIELDS = (
    "sale_id",
    "tenant_id",
    "product_id",
    "sold_at",
    "sale_price",
    "list_price",
    "currency",
    "title",
    "brand",
    "category",
    "condition",
    "image_url",
    "source_updated_at",
)
"""The sale's fields the table keeps, one column each; REQUIRED_SALE_FIELDS must be present."""

SOURCE_FIELDS = (*SALE_FIELDS, "voided")
"""The fields a source maps its columns onto: the sale's, and `voided`, which says the sale
was voided, refunded or cancelled at the source (`is_voided`). A voided row is not a sale: it
is not written, and a complete read of its day removes its sale from the table."""

VOIDED_TEXT = frozenset({"true", "t", "yes", "y", "1", "voided", "void"})
NOT_VOIDED_TEXT = frozenset({"false", "f", "no", "n", "0", ""})
"""How `voided` may be written as text, lower-cased: anything else is refused, not guessed."""

REQUIRED_SALE_FIELDS = ("sale_id", "tenant_id", "product_id", "sold_at", "sale_price", "currency")


Key = tuple[str, str]
"""(tenant_id, sale_id): a sale's identity within one source."""

CurrencyCase = Literal["normalise", "reject"]
"""What becomes of a valid currency code not written in upper case ("eur", "Eur"): "normalise"
writes the sale with the upper-case code and a SaleWarning; "reject" rejects the row as an
invalid currency."""


@dataclasses.dataclass(frozen=True, slots=True)
class SaleWarning:
    """A sale written with another value than its source gave: it lands, and the run says so.

    `reason` is a short stable slug to count by (`currency_normalised`); `detail` names the
    value the source gave and the one written.
    """

    tenant_id: str
    sale_id: str
    reason: str
    detail: str


@dataclasses.dataclass(frozen=True, slots=True)
class Sale:
    """One sale as the source reported it, validated: money is Decimal, times are aware UTC."""

    sale_id: str
    tenant_id: str
    product_id: str
    sold_at: datetime
    sale_price: Decimal
    currency: str
    list_price: Decimal | None = None
    title: str | None = None
    brand: str | None = None
    category: str | None = None
    condition: str | None = None
    image_url: str | None = None
    """The photo's URL as the table keeps it: without userinfo or signing parameters."""
    source_updated_at: datetime | None = None
    fetch_url: str | None = dataclasses.field(default=None, repr=False, compare=False)
    """The photo's URL exactly as the source gave it, credentials and signature included: only
    ever downloaded from, never stored, logged or put in an error. A sale made with
    `image_url` alone is fetched from there."""

    def __post_init__(self) -> None:
        if self.fetch_url is None and self.image_url is not None:
            object.__setattr__(self, "fetch_url", self.image_url)

    @property
    def key(self) -> Key:
        """(tenant_id, sale_id): unique within one source."""
        return (self.tenant_id, self.sale_id)


def parse_sale(
    raw: Mapping[str, Any],
    *,
    position: int,
    naive_tz: tzinfo,
    currency_case: CurrencyCase = "normalise",
    warnings: list[SaleWarning] | None = None,
    now: datetime | None = None,
) -> Sale:
    """Turn one source row (already mapped onto SOURCE_FIELDS) into a Sale, or raise InvalidSale.

    `position` identifies the row in errors when it has no usable sale id. Naive timestamps are
    read in `naive_tz`, the zone the source database keeps its wall-clock times in. Nothing is
    coerced silently: a price with more than two decimals, or a float that is not exactly a
    cent amount, is an error rather than a rounding; a value written otherwise than the source
    gave it (a currency code upper-cased, under `currency_case`) is appended to `warnings`.
    `voided` is not read here: see `is_voided`, asked first.
    """
    row = str(position)
    sale_id = _trimmed(raw.get("sale_id"))
    if sale_id is None:
        raise InvalidSale(row, "sale_id", "missing")
    row = sale_id

    def required_text(name: str) -> str:
        value = _trimmed(raw.get(name))
        if value is None:
            raise InvalidSale(row, name, "missing")
        return value

    tenant_id = required_text("tenant_id")
    product_id = required_text("product_id")
    sold_at = _timestamp(raw.get("sold_at"), row, "sold_at", naive_tz)
    if sold_at is None:
        raise InvalidSale(row, "sold_at", "missing")
    now = now or datetime.now(tz=sold_at.tzinfo)
    if sold_at > now + timedelta(minutes=5):
        raise InvalidSale(row, "sold_at", f"in the future ({sold_at.isoformat()})")
    sale_price = _money(raw.get("sale_price"), row, "sale_price")
    if sale_price is None:
        raise InvalidSale(row, "sale_price", "missing")
    written_currency = required_text("currency")
    currency = _currency(written_currency, row, currency_case)
    image_url = _trimmed(raw.get("image_url"))
    sale = Sale(
        sale_id=sale_id,
        tenant_id=tenant_id,
        product_id=product_id,
        sold_at=sold_at,
        sale_price=sale_price,
        currency=currency,
        list_price=_money(raw.get("list_price"), row, "list_price"),
        title=_exact(raw.get("title")),
        brand=_exact(raw.get("brand")),
        category=_exact(raw.get("category")),
        condition=_exact(raw.get("condition")),
        image_url=public_url(image_url) if image_url else None,
        source_updated_at=_timestamp(
            raw.get("source_updated_at"), row, "source_updated_at", naive_tz
        ),
        fetch_url=image_url,
    )
    # Only once the row is a sale: a row rejected for a later field lands with no warning.
    if currency != written_currency and warnings is not None:
        detail = f"{written_currency!r} written as {currency!r}"
        warnings.append(SaleWarning(tenant_id, sale_id, "currency_normalised", detail))
    return sale


def public_url(url: str) -> str:
    """`url` without userinfo and without the query parameters that sign or authorise it.

    A photo URL comes from the source and may carry credentials (`https://user:pw@host/...`) or a
    signature (`?X-Amz-Signature=...`): the table, the run record and the logs get this form.
    It also stays the same when the source signs the same photo anew each night, so the
    embedding is reused. A URL with neither comes back exactly as it was given.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        # Not parseable as a URL: keep the part before any userinfo or query, to be safe.
        return re.sub(r"//[^/?#]*@", "//", url).split("?", 1)[0]
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(
        part
        for part in parts.query.split("&")
        if not _is_signing_parameter(unquote_plus(part.split("=", 1)[0]))
    )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _is_signing_parameter(name: str) -> bool:
    name = name.strip().lower()
    return name in _SIGNING_PARAMETERS or name.startswith(("x-amz-", "x-goog-"))


def _currency(code: str, row: str, case: CurrencyCase) -> str:
    """The ISO 4217 code `code` is, upper-cased when `case` allows it, or InvalidSale."""
    # Only ASCII is upper-cased: "ısk".upper() is "ISK", a code nobody wrote.
    upper = code.upper() if code.isascii() else code
    if upper not in ISO_4217:
        raise InvalidSale(row, "currency", f"not an ISO 4217 code: {code[:8]!r}")
    if upper != code and case == "reject":
        raise InvalidSale(row, "currency", f"not an ISO 4217 code: {code!r} is not upper case")
    return upper


def _exact(value: Any) -> str | None:
    """Descriptive text exactly as the source gave it; None only for NULL."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _trimmed(value: Any) -> str | None:
    """An id, a code or a URL without the whitespace around it; None when nothing is left."""
    text = _exact(value)
    if text is None:
        return None
    return text.strip() or None


def is_voided(raw: Mapping[str, Any], *, position: int) -> bool:
    """Whether the source row (mapped onto SOURCE_FIELDS) marks its sale voided, or InvalidSale.

    `voided` may be a boolean, 0 or 1, a yes/no word (VOIDED_TEXT, NOT_VOIDED_TEXT, any case),
    or a timestamp (a `voided_at` column); NULL or an unmapped field means not voided. Anything
    else is refused rather than guessed: a rejected row keeps its stored sale, where a wrong
    guess would remove a sale or keep a refunded one. Asked before `parse_sale`, since nothing
    else of a voided row is kept: a voided sale whose price was blanked is not a bad row.
    """
    value = raw.get("voided")
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, datetime):
        return True
    if isinstance(value, (int, float, Decimal)) and value in (0, 1):
        return bool(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in VOIDED_TEXT:
            return True
        if text in NOT_VOIDED_TEXT:
            return False
    row = _trimmed(raw.get("sale_id")) or str(position)
    raise InvalidSale(row, "voided", f"not a yes/no value: {str(value)[:40]!r}")


def _money(value: Any, row: str, field: str) -> Decimal | None:
    """An amount as the exact Decimal the source holds, or InvalidSale; never a rounding.

    Decimal and int are taken as they are; a float by its shortest round-trip form (19.99 stays
    19.99, not 19.989999...); text only when it is plainly written digits.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    amount: Decimal
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, bool):
        raise InvalidSale(row, field, f"not an amount: {value!r}")
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidSale(row, field, f"not a finite amount: {value!r}")
        amount = Decimal(repr(value))
    elif isinstance(value, str) and _AMOUNT_TEXT.fullmatch(value.strip()):
        amount = Decimal(value.strip())
    else:
        raise InvalidSale(row, field, f"not an amount: {str(value)[:40]!r}")
    if not amount.is_finite():
        raise InvalidSale(row, field, f"not a finite amount: {amount}")
    if amount < 0:
        raise InvalidSale(row, field, f"negative: {_shown(amount)}")
    # The range first: quantizing a huge amount would overflow the decimal context.
    if amount >= _MONEY_LIMIT:
        raise InvalidSale(row, field, f"too large for decimal(12,2): {_shown(amount)}")
    if amount != amount.quantize(_CENT):
        raise InvalidSale(row, field, f"more than two decimal places: {_shown(amount)}")
    return amount.quantize(_CENT)


def _shown(amount: Decimal) -> str:
    text = str(amount)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _timestamp(value: Any, row: str, field: str, naive_tz: tzinfo) -> datetime | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidSale(row, field, f"not a timestamp: {value[:40]!r}") from None
    elif isinstance(value, date) and not isinstance(value, datetime):
        raise InvalidSale(row, field, f"a date without a time: {value.isoformat()}")
    if not isinstance(value, datetime):
        raise InvalidSale(row, field, f"not a timestamp: {value!r}")
    moment: datetime = value if value.tzinfo else value.replace(tzinfo=naive_tz)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidSale(row, field, f"out of range: {value.isoformat()}") from None
