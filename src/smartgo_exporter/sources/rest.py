"""Sales from a paginated JSON HTTP API: the seed's "alternative REST API" to the POS database.

One GET per page, with the window as ISO 8601 UTC query parameters (`start_param`,
`end_param`, e.g. `start=2026-10-24T23:00:00Z`) and `Authorization: Bearer <token>` when a
token is configured. Two ways to page:

- `page`: `page_param` counts from 1, `page_size_param` asks for `page_size` items; a page with
  fewer items than asked for (or none) is the last. So `page_size` must not exceed what the
  server is willing to return in one page.
- `cursor`: the first request has no cursor; each next one sends the value found under
  `next_cursor_field` in the previous body as `cursor_param`, until that value is null or absent.

Items sit under `items_field` in the body. A sale field is read from the item under the key
that `columns` maps it to, a dotted path reaching into nested objects (`price.amount`), or under
its own name. Numbers are read as Decimal, never float, so money stays exact.

Connection errors, timeouts, 429 and 5xx are retried `attempts` times in all, with exponential
backoff (a numeric Retry-After is honoured, up to a limit); any other non-2xx status, or a body
that is not the JSON expected, raises SourceError naming the URL (without its query or
credentials) and what went wrong. The token never appears in a message.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Generator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from smartgo_exporter.config import RestSourceConfig
from smartgo_exporter.errors import ConfigError, InvalidSale, SourceError
from smartgo_exporter.sales import SOURCE_FIELDS
from smartgo_exporter.sources import SaleBatch, parse_batches
from smartgo_exporter.windows import Window

_MAX_RETRY_AFTER_SECONDS = 60.0
"""A server asking for a longer pause than this is not waited for: the attempt is spent anyway."""


class RestSource:
    """The `Source` over a paginated JSON API (see the module docstring for the protocol).

    `backoff_seconds` is the first retry delay, doubled for each further attempt, plus up to
    50% jitter:

        source = RestSource(RestSourceConfig(url="https://pos.example/api/sales", token="..."))
        for batch in source.read(business_day(date(2026, 10, 25), "Europe/London"), 500, []):
            ...
        source.close()
    """

    def __init__(self, config: RestSourceConfig, *, backoff_seconds: float = 0.5) -> None:
        self._config = config
        self._zone = ZoneInfo(config.timezone)
        self._backoff = backoff_seconds
        headers = {"Accept": "application/json", "User-Agent": "smartgo-exporter"}
        self._token = config.token.get_secret_value() if config.token is not None else ""
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            url = httpx.URL(config.url)
        except httpx.InvalidURL as error:
            raise ConfigError("source.url", f"not a valid URL: {error}") from None
        # httpx drops the Authorization header on a redirect to another origin.
        self._client = httpx.Client(
            headers=headers, timeout=config.timeout_seconds, follow_redirects=True
        )
        self._where = str(url.copy_with(username=None, password=None, query=None, fragment=None))

    def read(
        self, window: Window, batch_size: int, tenant_ids: list[str]
    ) -> Generator[SaleBatch, None, None]:
        """Batches of at most `batch_size` items, built as pages arrive; closing it stops paging."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        rows = self._rows(window, set(tenant_ids))
        return parse_batches(rows, batch_size, self._zone, self._config.currency_case)

    def _rows(
        self, window: Window, tenants: set[str]
    ) -> Iterator[tuple[int, dict[str, Any] | InvalidSale]]:
        fields = {field: self._config.columns.get(field, field) for field in SOURCE_FIELDS}
        position = 0
        for items in self._pages(window):
            for item in items:
                position += 1
                if not isinstance(item, dict):
                    yield position, InvalidSale(str(position), "item", "not a JSON object")
                    continue
                raw = {field: _lookup(item, key) for field, key in fields.items()}
                if tenants and _as_text(raw["tenant_id"]) not in tenants:
                    continue
                yield position, raw

    def close(self) -> None:
        self._client.close()

    # --- pages ----------------------------------------------------------------------------------

    def _pages(self, window: Window) -> Iterator[list[Any]]:
        config = self._config
        base: dict[str, str | int] = {
            config.start_param: _iso_utc(window.start),
            config.end_param: _iso_utc(window.end),
        }
        if config.pagination == "page":
            page = 1
            while True:
                params = {**base, config.page_param: page, config.page_size_param: config.page_size}
                items = self._items(self._get(params, f"page {page}"), f"page {page}")
                if items:
                    yield items
                if len(items) < config.page_size:
                    return
                page += 1
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            params = base if cursor is None else {**base, config.cursor_param: cursor}
            label = "the first page" if cursor is None else f"cursor {cursor[:40]!r}"
            body = self._get(params, label)
            yield self._items(body, label)
            following = _lookup(body, config.next_cursor_field)
            if following is None or following == "":
                return
            cursor = str(following)
            if cursor in seen:
                raise SourceError(f"GET {self._where}: the cursor {cursor[:40]!r} came back twice")
            seen.add(cursor)

    def _items(self, body: Any, label: str) -> list[Any]:
        items = _lookup(body, self._config.items_field) if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise SourceError(
                f"GET {self._where} ({label}): the body has no list under "
                f"{self._config.items_field!r}"
            )
        return items

    def _get(self, params: dict[str, str | int], label: str) -> Any:
        attempts = self._config.attempts
        failure = ""
        for attempt in range(1, attempts + 1):
            delay = self._backoff * 2 ** (attempt - 1) * (1 + random.random() / 2)
            try:
                response = self._client.get(self._config.url, params=params)
            except httpx.TransportError as error:
                failure = self._redact(f"{type(error).__name__}: {error}".rstrip(": "))
            else:
                status = response.status_code
                if response.is_success:
                    return self._json(response, label)
                if status != 429 and status < 500:
                    raise SourceError(
                        f"GET {self._where} ({label}) returned HTTP {status} "
                        f"{response.reason_phrase}".rstrip()
                    )
                failure = f"HTTP {status} {response.reason_phrase}".rstrip()
                delay = _retry_after(response, delay)
            if attempt < attempts:
                time.sleep(delay)
        raise SourceError(
            f"GET {self._where} ({label}) failed after {attempts} attempt(s): {failure}"
        )

    def _json(self, response: httpx.Response, label: str) -> Any:
        try:
            return json.loads(response.content, parse_float=Decimal)
        except ValueError:
            kind = response.headers.get("content-type", "no content type")
            raise SourceError(
                f"GET {self._where} ({label}) returned a body that is not JSON ({kind[:60]})"
            ) from None

    def _redact(self, message: str) -> str:
        return message.replace(self._token, "***") if self._token else message


def _iso_utc(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _lookup(item: Any, path: str) -> Any:
    """The value under `path` (a key, or a dotted path into nested objects), or None."""
    if isinstance(item, dict) and path in item:
        return item[path]
    value = item
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _as_text(value: Any) -> str | None:
    return None if value is None else str(value).strip()


def _retry_after(response: httpx.Response, default: float) -> float:
    header = response.headers.get("retry-after", "")
    try:
        seconds = float(header)
    except ValueError:
        return default
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_SECONDS)
