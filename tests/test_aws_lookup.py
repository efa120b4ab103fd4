"""The lookup function, invoked in-process as a function URL would invoke it: real payload 2.0
events, settings from SGX_CONFIG and SGX_* variables, the local model, the demo store's photo
server and a real Iceberg table the export wrote. Each test starts a cold container.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pyarrow.compute as pc
import pytest
import structlog

from smartgo_exporter import aws_lookup
from smartgo_exporter.aws_lookup import handler
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.demo import DemoCatalog, DemoPaths
from smartgo_exporter.pipeline import export
from tests.demo_store import FIRST_DAY, copy_of_store, table_rows


class FakeContext:
    """The part of Lambda's context object a request handler reads."""

    aws_request_id = "req-lookup"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def url_event(
    body: object, *, method: str = "POST", path: str = "/", base64_body: bool = False
) -> dict[str, Any]:
    """A function URL request (payload format 2.0) as Lambda delivers it, IAM-authorised."""
    text = body if isinstance(body, str) else json.dumps(body)
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "abc.lambda-url.on.aws"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc",
            "authorizer": {"iam": {"accountId": "123456789012", "userArn": "arn:aws:iam::x"}},
            "domainName": "abc.lambda-url.eu-west-1.on.aws",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "test",
            },
            "requestId": "req-lookup",
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": 1_790_000_000_000,
        },
        "body": base64.b64encode(text.encode()).decode() if base64_body else text,
        "isBase64Encoded": base64_body,
    }


def ask(body: object, **options: Any) -> tuple[int, dict[str, Any]]:
    """The status and the decoded JSON body of the handler's response to `body`."""
    result = handler(url_event(body, **options), FakeContext())
    assert result["headers"]["content-type"] == "application/json"
    return result["statusCode"], json.loads(result["body"])


@pytest.fixture(scope="module")
def exported(
    store: tuple[DemoPaths, DemoCatalog], tmp_path_factory: pytest.TempPathFactory
) -> DemoPaths:
    """A copy of the demo store with its first day exported (and its index kept by the run)."""
    paths = copy_of_store(store[0], tmp_path_factory.mktemp("lookup"))
    [record] = export(load_config(paths.config), [FIRST_DAY])
    assert record.status.value in ("SUCCEEDED", "PARTIAL"), record.message
    return paths


@pytest.fixture(scope="module")
def sold(exported: DemoPaths) -> dict[str, Any]:
    """One embedded sale of the table, with the bytes of its photo."""
    rows = table_rows(load_config(exported.config))
    embedded = rows.filter(pc.is_valid(rows["embedding"])).sort_by("sale_id")
    sale: dict[str, Any] = embedded.slice(0, 1).to_pylist()[0]
    with urllib.request.urlopen(sale["image_url"], timeout=10) as photo:
        sale["photo"] = photo.read()
    return sale


@pytest.fixture(autouse=True)
def cold_container(exported: DemoPaths, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Configured through SGX_CONFIG as the function is; the warm Lookup is built afresh."""
    monkeypatch.setenv("SGX_CONFIG", str(exported.config))
    aws_lookup.warm_lookup.cache_clear()
    yield
    aws_lookup.warm_lookup.cache_clear()
    structlog.reset_defaults()


def photo_of(sale: dict[str, Any]) -> str:
    return base64.b64encode(sale["photo"]).decode()


# --- answers ---------------------------------------------------------------------------------


def test_a_base64_photo_of_a_sold_item_finds_its_sale_with_money_as_strings(
    sold: dict[str, Any],
) -> None:
    status, body = ask({"photo": photo_of(sold), "tenant": sold["tenant_id"], "k": 20})
    assert status == 200, body
    assert body["model"]
    matches = body["matches"]
    assert matches[0]["product_id"] == sold["product_id"]
    assert matches[0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    [same] = [match for match in matches if match["sale_id"] == sold["sale_id"]]
    assert same["sale_price"] == str(sold["sale_price"])
    assert Decimal(same["sale_price"]) == sold["sale_price"]
    assert all(isinstance(match["sale_price"], str) for match in matches)
    assert {match["tenant_id"] for match in matches} == {sold["tenant_id"]}


def test_k_is_how_many_matches_come_back(sold: dict[str, Any]) -> None:
    status, body = ask({"photo": photo_of(sold), "k": 3})
    assert status == 200, body
    assert len(body["matches"]) == 3


def test_a_photo_url_is_fetched_and_answered(sold: dict[str, Any]) -> None:
    """The demo's photo server is on 127.0.0.1, which its config allows for photos."""
    status, body = ask({"photo_url": sold["image_url"], "title": sold["title"]})
    assert status == 200, body
    assert body["matches"][0]["product_id"] == sold["product_id"]


def test_a_body_the_function_url_delivers_base64_encoded_is_read(sold: dict[str, Any]) -> None:
    status, body = ask({"photo": photo_of(sold), "k": 1}, base64_body=True)
    assert status == 200, body
    assert len(body["matches"]) == 1


def test_the_price_action_answers_a_price_in_strings_or_says_why_not(
    sold: dict[str, Any],
) -> None:
    status, body = ask(
        {
            "photo": photo_of(sold),
            "action": "price",
            "title": sold["title"],
            "condition": sold["condition"],
        }
    )
    assert status == 200, body
    assert body["condition"] == sold["condition"]
    if body["price"] is None:
        assert body["reason"]
        return
    price, low, high = (Decimal(body[name]) for name in ("price", "low", "high"))
    assert low <= price <= high
    assert price == price.quantize(Decimal("0.01"))
    assert body["comparables"] >= len(body["matches"]) > 0
    assert body["reason"] is None
    for match in body["matches"]:
        assert isinstance(match["sale_price"], str)
        assert isinstance(match["adjusted_price"], str)
        assert 0 < match["weight"] <= 1
    assert sum(match["weight"] for match in body["matches"]) <= 1 + 1e-9


def test_the_lookup_is_built_once_per_container(sold: dict[str, Any]) -> None:
    ask({"photo": photo_of(sold), "k": 1})
    ask({"photo": photo_of(sold), "k": 1})
    info = aws_lookup.warm_lookup.cache_info()
    assert (info.misses, info.hits) == (1, 1)


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({"photo": "not base64!"}, "photo"),
        ({"photo": 12}, "photo"),
        ({}, "photo"),
        ({"title": "boots"}, "photo"),
        ({"photo": "aGk=", "photo_url": "https://photos.example/1.jpg"}, "photo"),
        ({"photo_url": "/etc/passwd"}, "photo_url"),
        ({"photo_url": "file:///etc/passwd"}, "photo_url"),
        ({"photo": "aGk=", "k": 0}, "k"),
        ({"photo": "aGk=", "k": 101}, "k"),
        ({"photo": "aGk=", "k": "5"}, "k"),
        ({"photo": "aGk=", "k": True}, "k"),
        ({"photo": "aGk=", "action": "buy"}, "action"),
        ({"photo": "aGk=", "brand": "Levi's"}, "brand"),
        ({"photo": "aGk=", "action": "price", "currency": "euro"}, "currency"),
        ({"photo": "aGk=", "tenant": ""}, "tenant"),
        ({"photo": "aGk=", "colour": "red"}, "colour"),
        ("{not json", "body"),
        ([1, 2], "body"),
        ("", "body"),
    ],
)
def test_a_bad_request_is_refused_with_400_naming_the_field(
    request_body: object, field: str
) -> None:
    status, body = ask(request_body)
    assert (status, body["field"]) == (400, field), body
    assert body["error"]


def test_bytes_that_are_not_an_image_are_refused_naming_the_photo() -> None:
    status, body = ask({"photo": base64.b64encode(b"plain text, not a photo").decode()})
    assert (status, body["field"]) == (400, "photo"), body


def test_an_unknown_tenant_is_refused_naming_it(sold: dict[str, Any]) -> None:
    status, body = ask({"photo": photo_of(sold), "tenant": "no-such-store"})
    assert (status, body["field"]) == (400, "tenant"), body
    assert "'no-such-store'" in body["error"]


def test_a_currency_no_sale_was_made_in_is_refused_naming_it(sold: dict[str, Any]) -> None:
    status, body = ask({"photo": photo_of(sold), "action": "price", "currency": "JPY"})
    assert (status, body["field"]) == (400, "currency"), body
    assert "JPY" in body["error"]


def test_a_get_is_refused_with_405_and_the_method_allowed() -> None:
    result = handler(url_event("", method="GET"), FakeContext())
    assert result["statusCode"] == 405
    assert result["headers"]["allow"] == "POST"


def test_a_path_other_than_the_root_is_not_found(sold: dict[str, Any]) -> None:
    status, _ = ask({"photo": photo_of(sold)}, path="/admin")
    assert status == 404


def test_a_photo_over_the_size_limit_is_refused_with_413(
    sold: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGX_PHOTOS__MAX_BYTES", str(len(sold["photo"]) - 1))
    status, body = ask({"photo": photo_of(sold)})
    assert (status, body["field"]) == (413, "photo"), body


def test_a_photo_url_to_a_loopback_address_is_refused_unless_allowed(
    sold: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGX_PHOTOS__ALLOW_HOSTS", "[]")
    status, body = ask({"photo_url": sold["image_url"]})
    assert (status, body["field"]) == (400, "photo_url"), body
    assert "refused_address" in body["error"]


def test_a_deployment_fault_is_a_500_with_a_message_and_no_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SGX_PHOTOS__CONCURRENCY", "-1")
    status, body = ask({"photo": "aGk="})
    assert status == 500
    assert body == {"error": body["error"]}
    assert "photos.concurrency" in body["error"]
    assert "Traceback" not in body["error"]
