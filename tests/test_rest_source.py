"""The REST source, against a real HTTP server on 127.0.0.1 that behaves like a POS sales API.

The server keeps its sales nested the way such APIs do ({"store": {"id": ...}, "price":
{"amount": ..., "currency": ...}}), checks the bearer token, filters by the window, and pages by
number (/v1/sales) or by cursor (/v2/sales). A test can make it fail the next requests with 500,
or answer with something that is not JSON.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from smartgo_exporter.config import RestSourceConfig
from smartgo_exporter.errors import SourceError
from smartgo_exporter.sales import Sale
from smartgo_exporter.sources import SaleBatch
from smartgo_exporter.sources.rest import RestSource
from tests.sales import TITLE, WINDOW, ids, read_all

TOKEN = "sgx-test-token-3f9a1c"
CURSOR_PAGE_SIZE = 4

NESTED_COLUMNS = {
    "sale_id": "id",
    "tenant_id": "store.id",
    "product_id": "product.sku",
    "sale_price": "price.amount",
    "list_price": "price.list",
    "currency": "price.currency",
    "title": "product.title",
    "brand": "product.brand",
    "category": "product.category",
    "condition": "product.condition",
    "image_url": "product.photo.url",
    "source_updated_at": "updated_at",
}


def api_sale(sale_id: str, sold_at: datetime, **changes: Any) -> dict[str, Any]:
    """A sale as the API returns it; `changes` replace top-level keys."""
    item: dict[str, Any] = {
        "id": sale_id,
        "store": {"id": "1", "name": "Camden"},
        "sold_at": sold_at.isoformat().replace("+00:00", "Z"),
        "price": {"amount": 19.99, "list": "25.00", "currency": "EUR"},
        "product": {
            "sku": f"SKU-{sale_id}",
            "title": "Denim jacket",
            "brand": "Levi's",
            "category": "Jackets",
            "condition": "good",
            "photo": {"url": f"https://photos.example/{sale_id}.jpg"},
        },
        "updated_at": None,
    }
    item.update(changes)
    return item


def day_of_sales(count: int) -> list[dict[str, Any]]:
    """`count` sales spread over WINDOW, plus one just before it and one at its end."""
    step = (WINDOW.end - WINDOW.start) / count
    return [
        api_sale("before", WINDOW.start - timedelta(seconds=1)),
        *(api_sale(f"S-{n:03}", WINDOW.start + step * n) for n in range(count)),
        api_sale("at-end", WINDOW.end),
    ]


@dataclasses.dataclass
class FakePosApi:
    """What the server serves and what it saw; reset for each test."""

    port: int
    sales: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    requests: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    fail_next: int = 0
    """Answer this many of the next requests with 500."""
    garbage: bool = False
    """Answer with an HTML page instead of JSON."""
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def reset(self) -> None:
        with self.lock:
            self.sales, self.requests, self.fail_next, self.garbage = [], [], 0, False

    def respond(self, path: str, query: dict[str, str], authorization: str) -> tuple[int, bytes]:
        with self.lock:
            self.requests.append({"path": path, **query})
            if authorization != f"Bearer {TOKEN}":
                return HTTPStatus.UNAUTHORIZED, b'{"error": "unauthorized"}'
            if self.fail_next:
                self.fail_next -= 1
                return HTTPStatus.INTERNAL_SERVER_ERROR, b'{"error": "try again"}'
            if self.garbage:
                return HTTPStatus.OK, b"<html><body>Maintenance</body></html>"
            start = datetime.fromisoformat(query["start"])
            end = datetime.fromisoformat(query["end"])
            inside = [s for s in self.sales if start <= _sold_at(s) < end]
        if path == "/v1/sales":
            page, size = int(query.get("page", "1")), int(query.get("page_size", "50"))
            body: dict[str, Any] = {"items": inside[(page - 1) * size : page * size]}
        elif path == "/v2/sales":
            offset = int(base64.b64decode(query["cursor"])) if "cursor" in query else 0
            following = offset + CURSOR_PAGE_SIZE
            more = following < len(inside)
            body = {
                "results": inside[offset:following],
                "paging": {
                    "next": base64.b64encode(str(following).encode()).decode() if more else None
                },
            }
        else:
            return HTTPStatus.NOT_FOUND, b'{"error": "no such endpoint"}'
        return HTTPStatus.OK, json.dumps(body).encode()


def _sold_at(item: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(item["sold_at"])


@pytest.fixture(scope="session")
def _pos_api_server() -> Iterator[FakePosApi]:
    api: FakePosApi

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            status, body = api.respond(parts.path, query, self.headers.get("Authorization", ""))
            self.send_response(status)
            self.send_header(
                "Content-Type", "application/json" if body[:1] == b"{" else "text/html"
            )
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api = FakePosApi(port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, name="fake-pos-api", daemon=True)
    thread.start()
    yield api
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def pos_api(_pos_api_server: FakePosApi) -> FakePosApi:
    """The running fake POS API, emptied."""
    _pos_api_server.reset()
    return _pos_api_server


SourceFactory = Callable[..., RestSource]


@pytest.fixture
def open_source(pos_api: FakePosApi) -> Iterator[SourceFactory]:
    """Make RestSources over the page endpoint (unless told), with the right token."""
    sources: list[RestSource] = []

    def make(**settings: Any) -> RestSource:
        settings.setdefault("url", pos_api.url("/v1/sales"))
        settings.setdefault("token", TOKEN)
        settings.setdefault("columns", NESTED_COLUMNS)
        settings.setdefault("timezone", "Europe/London")
        source = RestSource(RestSourceConfig.model_validate(settings), backoff_seconds=0.01)
        sources.append(source)
        return source

    yield make
    for source in sources:
        source.close()


# --- pagination -------------------------------------------------------------------------------


def test_page_pagination_returns_every_sale_exactly_once(
    pos_api: FakePosApi, open_source: SourceFactory
) -> None:
    pos_api.sales = day_of_sales(11)

    sales, rejected = read_all(open_source(page_size=4))

    assert ids(sales) == [f"S-{n:03}" for n in range(11)]
    assert rejected == []
    assert [r["page"] for r in pos_api.requests] == ["1", "2", "3"]
    assert {r["page_size"] for r in pos_api.requests} == {"4"}


def test_page_pagination_stops_on_an_empty_page(
    pos_api: FakePosApi, open_source: SourceFactory
) -> None:
    pos_api.sales = day_of_sales(8)

    sales, _ = read_all(open_source(page_size=4))

    assert ids(sales) == [f"S-{n:03}" for n in range(8)]
    assert [r["page"] for r in pos_api.requests] == ["1", "2", "3"]


def test_cursor_pagination_returns_every_sale_exactly_once(
    pos_api: FakePosApi, open_source: SourceFactory
) -> None:
    pos_api.sales = day_of_sales(10)
    source = open_source(
        url=pos_api.url("/v2/sales"),
        pagination="cursor",
        items_field="results",
        next_cursor_field="paging.next",
    )

    sales, _ = read_all(source)

    assert ids(sales) == [f"S-{n:03}" for n in range(10)]
    assert len(pos_api.requests) == 3
    assert "cursor" not in pos_api.requests[0]
    assert all("cursor" in r for r in pos_api.requests[1:])


def test_the_window_is_sent_as_iso_utc(pos_api: FakePosApi, open_source: SourceFactory) -> None:
    read_all(open_source())

    (request,) = pos_api.requests
    assert (request["start"], request["end"]) == ("2026-10-24T23:00:00Z", "2026-10-26T00:00:00Z")


def test_batches_hold_at_most_batch_size_items(
    pos_api: FakePosApi, open_source: SourceFactory
) -> None:
    pos_api.sales = day_of_sales(9)

    batches = list(open_source(page_size=4).read(WINDOW, 2, []))

    assert [len(b.sales) for b in batches] == [2, 2, 2, 2, 1]
    assert all(isinstance(b, SaleBatch) for b in batches)


def test_tenant_filter_keeps_only_the_given_tenants(
    pos_api: FakePosApi, open_source: SourceFactory
) -> None:
    pos_api.sales = [
        api_sale(f"S-{store}", WINDOW.start + timedelta(hours=store), store={"id": store})
        for store in (1, 2, 3)
    ]

    sales, _ = read_all(open_source(), tenants=["1", "3"])

    assert ids(sales) == ["S-1", "S-3"]


# --- mapping and validation -------------------------------------------------------------------


def test_nested_fields_are_mapped_by_dotted_path(
    pos_api: FakePosApi, open_source: SourceFactory
) -> None:
    pos_api.sales = [
        api_sale(
            "S-1",
            datetime(2026, 10, 25, 12, 30, tzinfo=UTC),
            price={"amount": 49.9, "list": None, "currency": "gbp"},
            updated_at="2026-10-25T14:00:00+01:00",
        )
    ]

    (sale,), _ = read_all(open_source())

    assert sale == Sale(
        sale_id="S-1",
        tenant_id="1",
        product_id="SKU-S-1",
        sold_at=datetime(2026, 10, 25, 12, 30, tzinfo=UTC),
        sale_price=Decimal("49.90"),
        currency="GBP",
        list_price=None,
        title="Denim jacket",
        brand="Levi's",
        category="Jackets",
        condition="good",
        image_url="https://photos.example/S-1.jpg",
        source_updated_at=datetime(2026, 10, 25, 13, 0, tzinfo=UTC),
    )


def test_descriptive_text_comes_back_byte_for_byte(
    pos_api: FakePosApi, open_source: SourceFactory
) -> None:
    product = {"sku": "SKU-1", "title": TITLE, "brand": "Levi's  ", "category": ""}
    pos_api.sales = [api_sale("S-1", WINDOW.start, product=product)]

    (sale,), _ = read_all(open_source())

    assert (sale.title, sale.brand, sale.category, sale.condition) == (TITLE, "Levi's  ", "", None)


def test_a_lower_case_currency_is_rejected_when_the_source_says_reject(
    pos_api: FakePosApi, open_source: SourceFactory
) -> None:
    pos_api.sales = [
        api_sale("S-1", WINDOW.start, price={"amount": 5, "currency": "gbp"}),
        api_sale("S-2", WINDOW.start),
    ]

    sales, rejected = read_all(open_source(currency_case="reject"))

    assert ids(sales) == ["S-2"]
    assert [(r.row, r.field) for r in rejected] == [("S-1", "currency")]


def test_bad_items_are_rejected_naming_the_field_and_the_rest_are_read(
    pos_api: FakePosApi, open_source: SourceFactory
) -> None:
    at = WINDOW.start + timedelta(hours=1)
    pos_api.sales = [
        api_sale("good-1", at),
        api_sale("no-price", at, price={"currency": "EUR"}),
        api_sale("negative", at, price={"amount": -5, "currency": "EUR"}),
        api_sale("odd-money", at, price={"amount": 5, "currency": "EUU"}),
        api_sale("too-precise", at, price={"amount": 0.1 + 0.2, "currency": "EUR"}),
        api_sale("", at),
        api_sale("good-2", at),
    ]

    sales, rejected = read_all(open_source())

    assert ids(sales) == ["good-1", "good-2"]
    assert [(r.row, r.field) for r in rejected] == [
        ("no-price", "sale_price"),
        ("negative", "sale_price"),
        ("odd-money", "currency"),
        ("too-precise", "sale_price"),
        ("6", "sale_id"),
    ]


# --- failures ---------------------------------------------------------------------------------


def test_a_server_error_is_retried(pos_api: FakePosApi, open_source: SourceFactory) -> None:
    pos_api.sales = day_of_sales(3)
    pos_api.fail_next = 1

    sales, _ = read_all(open_source(attempts=3))

    assert len(sales) == 3
    assert [r["page"] for r in pos_api.requests] == ["1", "1"]


def test_a_server_that_keeps_failing_raises_source_error_after_the_attempts(
    pos_api: FakePosApi, open_source: SourceFactory
) -> None:
    pos_api.fail_next = 10

    with pytest.raises(SourceError, match="HTTP 500"):
        read_all(open_source(attempts=3))

    assert len(pos_api.requests) == 3


def test_a_refused_token_raises_source_error_without_the_token(
    pos_api: FakePosApi, open_source: SourceFactory
) -> None:
    wrong = "sgx-wrong-token-77e0b2"
    source = open_source(url=pos_api.url("/v1/sales?store=camden"), token=wrong)

    with pytest.raises(SourceError, match="HTTP 401") as error:
        read_all(source)

    assert pos_api.url("/v1/sales") in str(error.value)
    assert wrong not in "".join(traceback.format_exception(error.value))
    assert len(pos_api.requests) == 1


def test_a_page_that_is_not_json_raises_source_error(
    pos_api: FakePosApi, open_source: SourceFactory
) -> None:
    pos_api.garbage = True

    with pytest.raises(SourceError, match="not JSON"):
        read_all(open_source())


def test_an_unreachable_server_raises_source_error_after_the_attempts(
    open_source: SourceFactory,
) -> None:
    source = open_source(url="http://127.0.0.1:1/v1/sales", attempts=2, timeout_seconds=2)

    with pytest.raises(SourceError, match="after 2 attempt"):
        read_all(source)
