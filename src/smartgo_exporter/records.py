"""What flows through the exporter: a Sale from the source, a row of the table, a run record.

The table's one schema lives here, in Iceberg and Arrow form, and nowhere else. Validation of
source rows lives here too, so the SQL and REST sources reject bad rows the same way.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.schema import Schema
from pyiceberg.types import (
    DecimalType,
    FloatType,
    IntegerType,
    ListType,
    NestedField,
    StringType,
    TimestamptzType,
)

from smartgo_exporter.errors import InvalidSale

TABLE_KEY = ("source", "tenant_id", "sale_id")
"""The upsert key: ids repeat across stores, and a second exporter may share the table."""

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

# Active ISO 4217 codes. A typo such as "EUR " or "eur" is normalised; "EUU" is rejected, because a
# price in an unknown currency cannot be compared with anything.
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
"""The fields a source maps its columns onto; REQUIRED_SALE_FIELDS must be present."""

REQUIRED_SALE_FIELDS = ("sale_id", "tenant_id", "product_id", "sold_at", "sale_price", "currency")


Key = tuple[str, str]
"""(tenant_id, sale_id): a sale's identity within one source."""


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
    ever downloaded from, never stored, logged or put in an error."""

    @property
    def photo_url(self) -> str | None:
        """Where to download the photo from: `fetch_url` when the source gave one."""
        return self.fetch_url or self.image_url

    @property
    def key(self) -> Key:
        """(tenant_id, sale_id): unique within one source."""
        return (self.tenant_id, self.sale_id)


class EmbeddingStatus:
    """Values of the `embedding_status` column."""

    OK = "ok"
    NO_IMAGE = "no_image"

    @staticmethod
    def failed(reason: str) -> str:
        return f"failed:{reason}"


@dataclasses.dataclass(frozen=True, slots=True)
class Embedding:
    """What was embedded for one sale: the vector and the photo it came from."""

    vector: np.ndarray[Any, np.dtype[np.float32]]
    model: str
    image_sha256: str
    image_width: int
    image_height: int


@dataclasses.dataclass(frozen=True, slots=True)
class SaleRow:
    """A sale with the outcome of its photo: an embedding, or the status that says why not."""

    sale: Sale
    status: str
    embedding: Embedding | None = None


@dataclasses.dataclass(frozen=True)
class StoredRows:
    """The rows the table already holds for some keys, as one Arrow table with a key index."""

    table: pa.Table
    index: dict[Key, int]

    def __contains__(self, key: Key) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.index)

    def row(self, key: Key) -> dict[str, Any]:
        """Every column but the embedding, as Python values."""
        return self._rows[self.index[key]]

    @functools.cached_property
    def _rows(self) -> list[dict[str, Any]]:
        # Converted once, column by column: a batch looks up each of its sales twice (reuse,
        # then change detection), and cell-by-cell conversion cost 50 ms per 500 sales.
        columns = [name for name in self.table.column_names if name != "embedding"]
        rows: list[dict[str, Any]] = self.table.select(columns).to_pylist()
        return rows

    def vector(self, key: Key) -> np.ndarray[Any, np.dtype[np.float32]] | None:
        cell = self.table.column("embedding")[self.index[key]]
        if not cell.is_valid:
            return None
        return np.asarray(cell.values.to_numpy(zero_copy_only=False), dtype=np.float32)


# --- validation of source rows -------------------------------------------------------------------


def parse_sale(
    raw: Mapping[str, Any], *, position: int, naive_tz: tzinfo, now: datetime | None = None
) -> Sale:
    """Turn one source row (already mapped onto SALE_FIELDS) into a Sale, or raise InvalidSale.

    `position` identifies the row in errors when it has no usable sale id. Naive timestamps are
    read in `naive_tz`, the zone the source database keeps its wall-clock times in. Nothing is
    coerced silently: a price with more than two decimals, or a float that is not exactly a
    cent amount, is an error rather than a rounding.
    """
    row = str(position)
    sale_id = _text(raw.get("sale_id"))
    if sale_id is None:
        raise InvalidSale(row, "sale_id", "missing")
    row = sale_id

    def required_text(name: str) -> str:
        value = _text(raw.get(name))
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
    currency = required_text("currency")
    # Only ASCII is upper-cased: "ısk".upper() is "ISK", a code nobody wrote.
    currency = currency.upper() if currency.isascii() else currency
    if currency not in ISO_4217:
        raise InvalidSale(row, "currency", f"not an ISO 4217 code: {currency[:8]!r}")
    image_url = _text(raw.get("image_url"))
    return Sale(
        sale_id=sale_id,
        tenant_id=tenant_id,
        product_id=product_id,
        sold_at=sold_at,
        sale_price=sale_price,
        currency=currency,
        list_price=_money(raw.get("list_price"), row, "list_price"),
        title=_text(raw.get("title")),
        brand=_text(raw.get("brand")),
        category=_text(raw.get("category")),
        condition=_text(raw.get("condition")),
        image_url=public_url(image_url) if image_url else None,
        source_updated_at=_timestamp(
            raw.get("source_updated_at"), row, "source_updated_at", naive_tz
        ),
        fetch_url=image_url,
    )


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


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


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


# --- the table ----------------------------------------------------------------------------------

ICEBERG_SCHEMA = Schema(
    NestedField(1, "sale_id", StringType(), required=True),
    NestedField(2, "tenant_id", StringType(), required=True),
    NestedField(3, "product_id", StringType(), required=True),
    NestedField(4, "sold_at", TimestamptzType(), required=True),
    NestedField(5, "sale_price", DecimalType(MONEY_PRECISION, MONEY_SCALE), required=True),
    NestedField(6, "list_price", DecimalType(MONEY_PRECISION, MONEY_SCALE), required=False),
    NestedField(7, "currency", StringType(), required=True),
    NestedField(8, "title", StringType(), required=False),
    NestedField(9, "brand", StringType(), required=False),
    NestedField(10, "category", StringType(), required=False),
    NestedField(11, "condition", StringType(), required=False),
    NestedField(12, "image_url", StringType(), required=False),
    NestedField(13, "image_sha256", StringType(), required=False),
    NestedField(14, "image_width", IntegerType(), required=False),
    NestedField(15, "image_height", IntegerType(), required=False),
    NestedField(
        16,
        "embedding",
        ListType(element_id=24, element_type=FloatType(), element_required=True),
        required=False,
    ),
    NestedField(17, "embedding_model", StringType(), required=False),
    NestedField(18, "embedding_dim", IntegerType(), required=False),
    NestedField(19, "embedding_status", StringType(), required=True),
    NestedField(20, "source", StringType(), required=True),
    NestedField(21, "source_updated_at", TimestamptzType(), required=False),
    NestedField(22, "export_run_id", StringType(), required=False),
    NestedField(23, "exported_at", TimestamptzType(), required=False),
    identifier_field_ids=[],
)

ARROW_SCHEMA: pa.Schema = schema_to_pyarrow(ICEBERG_SCHEMA, include_field_ids=False)
"""The Arrow form of ICEBERG_SCHEMA, derived from it so the two cannot drift."""


def rows_to_arrow(
    rows: Sequence[SaleRow], *, source: str, run_id: str, exported_at: datetime
) -> pa.Table:
    """Columnar batch of rows ready for the table."""
    columns: dict[str, list[Any]] = {name: [] for name in ARROW_SCHEMA.names}
    for row in rows:
        sale, emb = row.sale, row.embedding
        for name in SALE_FIELDS:
            columns[name].append(getattr(sale, name))
        columns["image_sha256"].append(emb.image_sha256 if emb else None)
        columns["image_width"].append(emb.image_width if emb else None)
        columns["image_height"].append(emb.image_height if emb else None)
        columns["embedding"].append(emb.vector if emb else None)
        columns["embedding_model"].append(emb.model if emb else None)
        columns["embedding_dim"].append(len(emb.vector) if emb else None)
        columns["embedding_status"].append(row.status)
        columns["source"].append(source)
        columns["export_run_id"].append(run_id)
        columns["exported_at"].append(exported_at)
    return pa.table(
        {name: _column(name, values) for name, values in columns.items()}, schema=ARROW_SCHEMA
    )


def _column(name: str, values: list[Any]) -> pa.Array:
    field = ARROW_SCHEMA.field(name)
    if name != "embedding":
        return pa.array(values, type=field.type)
    # Build the list column from one flat float32 buffer: per-row Python lists of 1,280 floats
    # would cost more than the model does.
    present = [v for v in values if v is not None]
    flat = (
        np.concatenate(present).astype(np.float32, copy=False)
        if present
        else np.empty(0, np.float32)
    )
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum([0 if v is None else len(v) for v in values], out=offsets[1:])
    mask = pa.array([v is None for v in values], type=pa.bool_())
    return pa.LargeListArray.from_arrays(
        pa.array(offsets), pa.array(flat, type=pa.float32()), type=field.type, mask=mask
    )


# --- runs ---------------------------------------------------------------------------------------


class RunStatus(enum.StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    PARTIAL = "PARTIAL"
    FAILED = "FAILED"


MAX_RECORDED_ERRORS = 50


@dataclasses.dataclass(frozen=True, slots=True)
class RunError:
    """One thing a run did not land, and why. `sale_id` is empty for run-wide failures.

    `stage` is where it happened (source, photo, embedding, table, run) and `reason` a short
    stable slug (`sale_price`, `http_404`, `decode_failed`) to count by; `detail` is for people.
    """

    sale_id: str
    stage: str
    reason: str
    detail: str = ""


@dataclasses.dataclass(slots=True)
class RunCounts:
    sales: int = 0
    """Rows the source returned for the window, valid or not."""
    rejected: int = 0
    """Rows not written because a required field was missing or malformed."""
    written: int = 0
    """Rows upserted into the table (new or changed)."""
    unchanged: int = 0
    """Rows already in the table exactly as the source has them: nothing to write."""
    embedded: int = 0
    reused: int = 0
    """Sales whose embedding came from the table instead of the model."""
    no_image: int = 0
    failed: int = 0
    """Sales written without an embedding because the photo or the model failed."""

    def add(self, other: RunCounts) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


@dataclasses.dataclass(slots=True)
class RunRecord:
    """One export run of one window, as the progress store keeps it."""

    run_id: str
    business_date: date
    window_start: datetime
    window_end: datetime
    trigger: str
    status: RunStatus
    started_at: datetime
    expires_at: datetime
    finished_at: datetime | None = None
    counts: RunCounts = dataclasses.field(default_factory=RunCounts)
    errors: list[RunError] = dataclasses.field(default_factory=list)
    error_count: int = 0
    """All errors seen, of which at most MAX_RECORDED_ERRORS are kept in `errors`."""
    failures: dict[str, int] = dataclasses.field(default_factory=dict)
    """Count of every error by `stage:reason`, beyond the first MAX_RECORDED_ERRORS too."""
    message: str = ""

    def record_error(self, error: RunError) -> None:
        self.error_count += 1
        category = f"{error.stage}:{error.reason}"
        self.failures[category] = self.failures.get(category, 0) + 1
        if len(self.errors) < MAX_RECORDED_ERRORS:
            self.errors.append(error)

    @property
    def finished(self) -> bool:
        return self.status is not RunStatus.RUNNING

    def to_document(self) -> dict[str, Any]:
        """A JSON-ready dict; every progress store keeps this same document."""
        return {
            "run_id": self.run_id,
            "business_date": self.business_date.isoformat(),
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "trigger": self.trigger,
            "status": str(self.status),
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "expires_at": self.expires_at.isoformat(),
            "counts": dataclasses.asdict(self.counts),
            "errors": [dataclasses.asdict(error) for error in self.errors],
            "error_count": self.error_count,
            "failures": self.failures,
            "message": self.message,
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> RunRecord:
        finished_at = document.get("finished_at")
        return cls(
            run_id=document["run_id"],
            business_date=date.fromisoformat(document["business_date"]),
            window_start=datetime.fromisoformat(document["window_start"]),
            window_end=datetime.fromisoformat(document["window_end"]),
            trigger=document["trigger"],
            status=RunStatus(document["status"]),
            started_at=datetime.fromisoformat(document["started_at"]),
            finished_at=datetime.fromisoformat(finished_at) if finished_at else None,
            expires_at=datetime.fromisoformat(document["expires_at"]),
            counts=RunCounts(**document["counts"]),
            errors=[RunError(**error) for error in document["errors"]],
            error_count=int(document["error_count"]),
            failures={key: int(value) for key, value in document["failures"].items()},
            message=document.get("message", ""),
        )
