"""The pricing lookup on AWS: the sold items most like a photo, and the price they suggest.

Handler: `smartgo_exporter.aws_lookup.handler`, behind a Lambda function URL with AWS_IAM auth
(deploy/template.yaml, `LookupFunction`). It answers with the same `Lookup` as the CLI's
`similar` and `price`; what is the function URL's own lives here: reading the HTTP request,
checking it, and turning the answer and the library's errors into HTTP responses.

Request: POST, a JSON object as the body (payload format 2.0):

    {"photo": "<base64 of the image>"}  or  {"photo_url": "https://..."}   exactly one
    "title": "Dr. Martens 1460 boots"   optional; a multimodal embedder reads it too
    "tenant": "ams-jordaan"             optional; default: the sales of every tenant
    "k": 10                             matches to return, 1 to 100
    "action": "similar" | "price"       default "similar"
    "brand", "condition", "currency"    optional, "price" only

Responses, always JSON; money is a string ("12.50"), so no cent is lost to a float:

    200 similar  {"model": "...", "matches": [{"sale_id": ..., "sale_price": "12.50",
                  "similarity": 0.93, ...}]}                            (`Match.to_json`)
    200 price    {"model": "...", "price": "12.50" | null, "low": ..., "high": ...,
                  "currency": "EUR", "comparables": 7, "similarity": 0.91, "brand": ...,
                  "condition": ..., "reason": null | "why there is no price",
                  "matches": [the `k` heaviest comparables: the sale, "similarity",
                              "adjusted_price" (a string) and "weight" (its share, 0..1)]}
    400  {"error": "...", "field": "photo"}   the request is at fault; `field` names what
    405  not POST;  404  a path other than /;  413  a photo over `photos.max_bytes`
    500  {"error": "..."}  the deployment is at fault (configuration, an index of another model)
    502  {"error": "..."}  the table or the embedding model could not be reached

A photo URL is fetched like an export's photos: the same address guard (no private, loopback or
link-local address unless `photos.allow_hosts` or `photos.allow_networks` says so), size limit
and timeouts. Messages never carry a traceback or a secret; unexpected errors are logged with
the request id and answered with that id only.

Settings are loaded as the export handler loads them (`aws_lambda.load_settings`: SGX_CONFIG
and SGX_* variables, secrets resolved), and the `Lookup` (the model, each tenant's index) is
built once per container by `warm_lookup`; each request brings the indexes to the table's
current snapshot in memory, so a sale exported a minute ago is found and nothing is written.
Tests start a cold container with `warm_lookup.cache_clear()`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import time
import urllib.parse
from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

import structlog

from smartgo_exporter.aws_lambda import LambdaContext, load_settings
from smartgo_exporter.config import Settings
from smartgo_exporter.errors import (
    ConfigError,
    ExporterError,
    IndexMismatch,
    LookupFailed,
    ModelUnavailable,
    NoSalesInCurrency,
    PhotoUnreadable,
    SinkError,
    UnknownTenant,
)
from smartgo_exporter.lookup import Lookup, read_photo
from smartgo_exporter.pricing import PriceSuggestion

log = structlog.get_logger(__name__)

MAX_K = 100
DEFAULT_K = 10
MAX_URL_LENGTH = 2048
ACTIONS = ("similar", "price")
_PRICE_FIELDS = ("brand", "condition", "currency")
_FIELDS = ("photo", "photo_url", "title", "tenant", "k", "action", *_PRICE_FIELDS)
_HEADERS = {"content-type": "application/json"}
_CENT = Decimal("0.01")


class BadRequest(ExporterError):
    """The request is not one the lookup answers; `field` names the part at fault and `status`
    is the HTTP status that says how (400, or 404, 405, 413)."""

    def __init__(self, field: str, reason: str, status: int = 400) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.status = status


@dataclasses.dataclass(frozen=True, slots=True)
class LookupRequest:
    """What a request asks, checked: exactly one of `photo` (bytes) and `photo_url`."""

    photo: bytes | None
    photo_url: str | None
    action: Literal["similar", "price"] = "similar"
    title: str | None = None
    tenant: str | None = None
    k: int = DEFAULT_K
    brand: str | None = None
    condition: str | None = None
    currency: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class LookupRuntime:
    """What a container loads once and its warm invocations reuse."""

    settings: Settings
    lookup: Lookup


@functools.cache
def warm_lookup() -> LookupRuntime:
    """The settings and the `Lookup` of this container, built on its first request.

    Not cached when building fails (functools.cache keeps only results), so a container whose
    first attempt met a passing SSM or catalog error tries again on its next request.
    """
    settings = load_settings()
    return LookupRuntime(settings, Lookup(settings))


def handler(event: object, context: LambdaContext) -> dict[str, Any]:
    """Answer one function URL request; see the module docstring for requests and responses."""
    with structlog.contextvars.bound_contextvars(request_id=context.aws_request_id):
        started = time.monotonic()
        try:
            runtime = warm_lookup()
            request = parse_request(event, max_photo_bytes=runtime.settings.photos.max_bytes)
            body = answer(runtime, request)
        except BadRequest as error:
            log.warning("request_refused", field=error.field, reason=error.reason)
            return response(error.status, {"error": error.reason, "field": error.field})
        except Exception as error:
            return _error_response(error, context.aws_request_id)
        log.info(
            "lookup_answered",
            action=request.action,
            tenant=request.tenant,
            matches=len(body["matches"]),
            seconds=round(time.monotonic() - started, 3),
        )
        return response(200, body)


def parse_request(event: object, *, max_photo_bytes: int) -> LookupRequest:
    """The lookup a function URL event asks for; BadRequest naming the part at fault."""
    if not isinstance(event, Mapping):
        raise BadRequest("event", f"must be a function URL event, not {type(event).__name__}")
    context = event.get("requestContext")
    http = context.get("http") if isinstance(context, Mapping) else None
    method = http.get("method") if isinstance(http, Mapping) else None
    if method is None:
        raise BadRequest("requestContext", "not a function URL event (no http.method)")
    if method != "POST":
        raise BadRequest("method", f"{method} is not answered; POST a JSON object", 405)
    path = event.get("rawPath") or "/"
    if path != "/":
        raise BadRequest("path", f"nothing at {path}; POST to /", 404)
    fields = _json_body(event)
    unknown = [key for key in fields if key not in _FIELDS]
    if unknown:
        raise BadRequest(str(unknown[0]), f"unknown field; the fields are {', '.join(_FIELDS)}")
    action = fields.get("action", "similar")
    if action not in ACTIONS:
        raise BadRequest("action", f"must be one of {', '.join(ACTIONS)}, not {action!r}")
    if action != "price":
        for field in _PRICE_FIELDS:
            if fields.get(field) is not None:
                raise BadRequest(field, 'only the "price" action takes it')
    given = [field for field in ("photo", "photo_url") if fields.get(field) is not None]
    if len(given) != 1:
        raise BadRequest(
            "photo",
            "give the image as `photo` (base64) or `photo_url`, not both"
            if given
            else "missing: give the image as `photo` (base64) or `photo_url`",
        )
    return LookupRequest(
        photo=_photo(fields["photo"], max_photo_bytes) if given == ["photo"] else None,
        photo_url=_photo_url(fields["photo_url"]) if given == ["photo_url"] else None,
        action=action,
        title=_text(fields, "title"),
        tenant=_text(fields, "tenant"),
        k=_k(fields.get("k", DEFAULT_K)),
        brand=_text(fields, "brand"),
        condition=_text(fields, "condition"),
        currency=_currency(fields),
    )


def answer(runtime: LookupRuntime, request: LookupRequest) -> dict[str, Any]:
    """The response body for a checked request: the library's answer, made JSON."""
    photo, location = _read(runtime, request)
    lookup = runtime.lookup
    if request.action == "similar":
        matches = lookup.similar(
            photo, title=request.title, tenant=request.tenant, k=request.k, location=location
        )
        return {"model": lookup.model, "matches": [match.to_json() for match in matches]}
    suggestion = lookup.suggest_price(
        photo,
        title=request.title,
        brand=request.brand,
        condition=request.condition,
        currency=request.currency,
        tenant=request.tenant,
        location=location,
    )
    return {"model": lookup.model, **price_json(suggestion, request.k)}


def price_json(suggestion: PriceSuggestion, k: int = DEFAULT_K) -> dict[str, Any]:
    """A suggestion as JSON, money as strings, with its `k` heaviest comparables as `matches`."""
    total = sum(comparable.weight for comparable in suggestion.comparables) or 1.0
    heaviest = sorted(suggestion.comparables, key=lambda c: -c.weight)[:k]
    return {
        "price": _money(suggestion.price),
        "low": _money(suggestion.low),
        "high": _money(suggestion.high),
        "currency": suggestion.currency,
        "comparables": len(suggestion.comparables),
        "similarity": suggestion.similarity,
        "brand": suggestion.brand,
        "condition": suggestion.condition,
        "reason": suggestion.reason,
        "matches": [
            {
                **_sale_json(comparable.sale),
                "similarity": comparable.similarity,
                "adjusted_price": _money(
                    Decimal(str(comparable.adjusted_price)).quantize(_CENT, ROUND_HALF_EVEN)
                ),
                "weight": comparable.weight / total,
            }
            for comparable in heaviest
        ],
    }


def response(status: int, body: Mapping[str, Any]) -> dict[str, Any]:
    """A function URL response with a JSON body."""
    headers = dict(_HEADERS)
    if status == 405:
        headers["allow"] = "POST"
    return {"statusCode": status, "headers": headers, "body": json.dumps(body)}


def _read(runtime: LookupRuntime, request: LookupRequest) -> tuple[bytes, str]:
    """The photo's bytes and how an error names it; a URL is fetched here, through the guard."""
    if request.photo is not None:
        return request.photo, "(base64)"
    assert request.photo_url is not None
    try:
        return read_photo(request.photo_url, runtime.settings.photos), request.photo_url
    except PhotoUnreadable as error:
        status = 413 if error.reason.startswith("too_large") else 400
        raise BadRequest("photo_url", str(error), status) from None


def _error_response(error: Exception, request_id: str) -> dict[str, Any]:
    """The response for an error of the library or the deployment: a message, no traceback."""
    if isinstance(error, PhotoUnreadable):
        field = "photo" if error.location == "(base64)" else "photo_url"
        log.warning("request_refused", field=field, reason=str(error))
        return response(400, {"error": str(error), "field": field})
    if isinstance(error, UnknownTenant | NoSalesInCurrency):
        field = "tenant" if isinstance(error, UnknownTenant) else "currency"
        log.warning("request_refused", field=field, reason=str(error))
        return response(400, {"error": str(error), "field": field})
    if isinstance(error, IndexMismatch | ConfigError):
        # The deployment's fault, not the caller's: the same request will fail until it is mended.
        log.error("lookup_misconfigured", error=str(error))
        return response(500, {"error": str(error)})
    if isinstance(error, LookupFailed):
        log.warning("request_refused", reason=str(error))
        return response(400, {"error": str(error)})
    if isinstance(error, SinkError | ModelUnavailable):
        log.error("lookup_upstream_failed", error=str(error))
        return response(502, {"error": str(error)})
    if isinstance(error, ExporterError):
        log.error("lookup_failed", error=f"{type(error).__name__}: {error}")
        return response(500, {"error": str(error)})
    log.exception("lookup_crashed")
    return response(500, {"error": f"internal error; request id {request_id}"})


def _json_body(event: Mapping[str, Any]) -> Mapping[str, Any]:
    body = event.get("body")
    if body is None or body == "":
        raise BadRequest("body", "missing: POST a JSON object")
    if not isinstance(body, str):
        raise BadRequest("body", f"must be text, not {type(body).__name__}")
    try:
        text = base64.b64decode(body, validate=True) if event.get("isBase64Encoded") else body
        fields = json.loads(text)
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest("body", f"not JSON: {error}") from None
    if not isinstance(fields, dict):
        raise BadRequest("body", f"must be a JSON object, not {type(fields).__name__}")
    return fields


def _photo(value: object, max_bytes: int) -> bytes:
    if not isinstance(value, str) or not value:
        raise BadRequest("photo", "must be the image's bytes as a base64 string")
    # Refuse by the text's length first, so an oversized photo is never decoded.
    if (len(value) // 4) * 3 - 2 > max_bytes:
        raise BadRequest("photo", f"over the {max_bytes} bytes a photo may have", 413)
    try:
        data = base64.b64decode(value, validate=True)
    except binascii.Error as error:
        raise BadRequest("photo", f"not valid base64: {error}") from None
    if len(data) > max_bytes:
        raise BadRequest("photo", f"{len(data)} bytes, over the {max_bytes} a photo may have", 413)
    return data


def _photo_url(value: object) -> str:
    """An http(s) URL; anything else (a path above all: read_photo reads files) is refused."""
    if not isinstance(value, str) or len(value) > MAX_URL_LENGTH:
        raise BadRequest("photo_url", f"must be an http(s) URL of at most {MAX_URL_LENGTH} chars")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("photo_url", f"must be an http(s) URL, not {value[:100]!r}")
    return value


def _text(fields: Mapping[str, Any], field: str) -> str | None:
    value = fields.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(field, f"must be a non-empty string, not {value!r}")
    return value


def _k(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_K:
        raise BadRequest("k", f"must be a whole number from 1 to {MAX_K}, not {value!r}")
    return value


def _currency(fields: Mapping[str, Any]) -> str | None:
    value = _text(fields, "currency")
    if value is not None and not (len(value) == 3 and value.isascii() and value.isupper()):
        raise BadRequest("currency", f"must be an ISO 4217 code such as EUR, not {value!r}")
    return value


def _sale_json(sale: Mapping[str, Any]) -> dict[str, Any]:
    shown = dict(sale)
    shown["sale_price"] = _money(sale["sale_price"])
    shown["sold_at"] = sale["sold_at"].isoformat()
    return shown


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
